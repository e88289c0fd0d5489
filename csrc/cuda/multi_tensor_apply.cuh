#pragma once

// One kernel launch over many tensors: every tensor is cut into chunks, each CUDA block handles
// one chunk, and a launch carries the addresses of up to kMaxTensors tensors and the
// (tensor, chunk) of up to kMaxBlocks blocks in its arguments (the scheme of apex and ATen's
// MultiTensorApply). A tensor whose chunks do not fit in one launch continues in the next.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

namespace darts_fast {

constexpr int64_t kMtaChunk = 65536;
constexpr int kMtaThreads = 512;
constexpr int kMtaMaxBlocks = 320;
// Kernel arguments are limited to 4 KB: fewer tensors fit when each carries more lists.
constexpr int mta_max_tensors(int depth) {
  return depth == 1 ? 110 : depth == 2 ? 64 : depth == 3 ? 48 : 36;
}

template <int depth>
struct TensorListMeta {
  void* addresses[depth][mta_max_tensors(depth)];
  int64_t numel[mta_max_tensors(depth)];
  unsigned char block_to_tensor[kMtaMaxBlocks];
  int block_to_chunk[kMtaMaxBlocks];
  // Index, over all launches of one call, of this launch's first block: lets a functor write
  // one result per chunk into a buffer without collisions.
  int64_t first_block;
};

// The element range [begin, end) of this block's chunk in its tensor.
template <int depth>
__device__ inline int chunk_range(const TensorListMeta<depth>& meta, int64_t* begin,
                                  int64_t* end) {
  const int tensor = meta.block_to_tensor[blockIdx.x];
  *begin = static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]) * kMtaChunk;
  const int64_t stop = *begin + kMtaChunk;
  *end = meta.numel[tensor] < stop ? meta.numel[tensor] : stop;
  return tensor;
}

template <int depth, typename Functor, typename... Args>
__global__ void __launch_bounds__(kMtaThreads)
    multi_tensor_apply_kernel(TensorListMeta<depth> meta, Functor functor, Args... args) {
  functor(meta, args...);
}

// The number of chunks (blocks) all launches of multi_tensor_apply over `tensors` will use.
inline int64_t mta_num_chunks(const std::vector<at::Tensor>& tensors) {
  int64_t chunks = 0;
  for (const auto& t : tensors) chunks += (t.numel() + kMtaChunk - 1) / kMtaChunk;
  return chunks;
}

// lists[d][i] is tensor i of list d; all lists have the same length and tensor i of every list
// has the same number of elements and the same (dense) layout.
template <int depth, typename Functor, typename... Args>
void multi_tensor_apply(const std::vector<std::vector<at::Tensor>>& lists, Functor functor,
                        Args... args) {
  TORCH_INTERNAL_ASSERT(static_cast<int>(lists.size()) == depth);
  constexpr int max_tensors = mta_max_tensors(depth);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  TensorListMeta<depth> meta{};
  int tensors = 0, blocks = 0;
  const auto launch = [&] {
    multi_tensor_apply_kernel<depth><<<blocks, kMtaThreads, 0, stream>>>(meta, functor, args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    meta.first_block += blocks;
    blocks = 0;
  };
  const size_t n = lists[0].size();
  for (size_t t = 0; t < n; ++t) {
    const int64_t numel = lists[0][t].numel();
    if (numel == 0) continue;
    for (int d = 0; d < depth; ++d) meta.addresses[d][tensors] = lists[d][t].data_ptr();
    meta.numel[tensors] = numel;
    ++tensors;
    const int64_t chunks = (numel + kMtaChunk - 1) / kMtaChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_to_tensor[blocks] = static_cast<unsigned char>(tensors - 1);
      meta.block_to_chunk[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMtaMaxBlocks || (tensors == max_tensors && last_chunk)) {
        launch();
        if (last_chunk) {
          tensors = 0;
        } else {  // this tensor goes on in the next launch, in slot 0
          for (int d = 0; d < depth; ++d) meta.addresses[d][0] = meta.addresses[d][tensors - 1];
          meta.numel[0] = meta.numel[tensors - 1];
          tensors = 1;
        }
      }
    }
  }
  if (blocks > 0) launch();
}

}  // namespace darts_fast
