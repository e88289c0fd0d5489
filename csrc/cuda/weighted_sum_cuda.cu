// CUDA kernels of darts_fast::weighted_sum and darts_fast::weighted_sum_backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cuda/block_reduce.cuh"
#include "weighted_sum_host.h"
#include "weighted_sum_math.h"

namespace darts_fast {
namespace {

// Tensors handled by one launch; more than this many are processed in groups.
constexpr int kGroup = 8;
constexpr int kThreads = 256;
// A fixed grid cap (not derived from the device) keeps the weight-gradient reduction order, and
// so its bits, the same on every run and every GPU.
constexpr int64_t kMaxBlocks = 2048;

template <typename scalar_t>
struct Group {
  const scalar_t* x[kGroup];
  scalar_t* grad_x[kGroup];  // null where that gradient is not wanted
  int first;                 // index of x[0] among all K tensors
  int count;
};

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(Group<scalar_t> group, const acc_t* __restrict__ w,
                               scalar_t* __restrict__ out, int64_t n, bool accumulate) {
  acc_t w_k[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) w_k[j] = j < group.count ? w[group.first + j] : acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    acc_t acc = accumulate ? static_cast<acc_t>(out[i]) : acc_t(0);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count) acc = weighted_sum_term(acc, w_k[j], static_cast<acc_t>(group.x[j][i]));
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// partials: [gridDim.x, K] per-block sums of g * x_k, or null when the weight gradient is not
// wanted.
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(Group<scalar_t> group, const acc_t* __restrict__ w,
                                const scalar_t* __restrict__ g, int64_t n,
                                acc_t* __restrict__ partials, int64_t K) {
  __shared__ acc_t shared[32];
  acc_t w_k[kGroup], part[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) {
    w_k[j] = j < group.count ? w[group.first + j] : acc_t(0);
    part[j] = acc_t(0);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const acc_t gi = static_cast<acc_t>(g[i]);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count) {
        if (group.grad_x[j]) {
          group.grad_x[j][i] = static_cast<scalar_t>(weighted_sum_input_grad(w_k[j], gi));
        }
        if (partials) {
          part[j] = weighted_sum_weight_grad_term(part[j], gi, static_cast<acc_t>(group.x[j][i]));
        }
      }
    }
  }
  if (partials) {
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count) {
        const acc_t total = block_sum(part[j], shared);
        if (threadIdx.x == 0) partials[blockIdx.x * K + group.first + j] = total;
      }
    }
  }
}

// grad_w[k] = sum over blocks of partials[b, k], one block per k, in a fixed order.
template <typename acc_t>
__global__ void reduce_partials_kernel(const acc_t* __restrict__ partials, int64_t num_blocks,
                                       int64_t K, acc_t* __restrict__ grad_w) {
  __shared__ acc_t shared[32];
  const int64_t k = blockIdx.x;
  acc_t v = acc_t(0);
  for (int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) v += partials[b * K + k];
  v = block_sum(v, shared);
  if (threadIdx.x == 0) grad_w[k] = v;
}

at::Tensor weighted_sum_cuda(at::TensorList xs_in, const at::Tensor& weights) {
  check_weighted_sum_args("weighted_sum", xs_in, weights);
  TORCH_CHECK(xs_in[0].is_cuda(), "weighted_sum: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  at::Tensor out = new_like_first(xs_in);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const std::vector<at::Tensor> xs = in_layout_of(xs_in, out);
  const at::Tensor w = weights.to(accumulate_type(out.scalar_type())).contiguous();
  const int K = static_cast<int>(xs.size());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int first = 0; first < K; first += kGroup) {
      Group<scalar_t> group{};
      group.first = first;
      group.count = std::min(kGroup, K - first);
      for (int j = 0; j < group.count; ++j) group.x[j] = xs[first + j].const_data_ptr<scalar_t>();
      forward_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
          group, w.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n, first > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(
    const at::Tensor& grad_in, at::TensorList xs_in, const at::Tensor& weights,
    const c10::List<bool>& xs_need_grad, bool weights_need_grad) {
  check_backward_args("weighted_sum_backward", grad_in, xs_in, weights, xs_need_grad);
  TORCH_CHECK(xs_in[0].is_cuda(), "weighted_sum_backward: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const int K = static_cast<int>(xs_in.size());
  const at::ScalarType acc_type = accumulate_type(xs_in[0].scalar_type());

  std::vector<at::Tensor> grad_xs;
  for (int k = 0; k < K; ++k) {
    if (xs_need_grad.get(k)) grad_xs.push_back(new_like_first(xs_in));
  }
  at::Tensor grad_weights = weights_need_grad ? at::zeros({K}, weights.options())
                                              : at::empty({0}, weights.options());
  const at::Tensor like = new_like_first(xs_in);
  const int64_t n = like.numel();
  if (n == 0 || (grad_xs.empty() && !weights_need_grad)) return {grad_xs, grad_weights};

  const at::Tensor g = in_layout_of(grad_in, like);
  const std::vector<at::Tensor> xs = weights_need_grad ? in_layout_of(xs_in, like)
                                                       : std::vector<at::Tensor>{};
  const at::Tensor w = weights.to(acc_type).contiguous();
  const int64_t blocks = blocks_for(n);
  at::Tensor partials = weights_need_grad
                            ? at::empty({blocks, K}, weights.options().dtype(acc_type))
                            : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(),
                                  "weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int next_grad = 0;
    for (int first = 0; first < K; first += kGroup) {
      Group<scalar_t> group{};
      group.first = first;
      group.count = std::min(kGroup, K - first);
      for (int j = 0; j < group.count; ++j) {
        const int k = first + j;
        group.x[j] = weights_need_grad ? xs[k].const_data_ptr<scalar_t>() : nullptr;
        group.grad_x[j] =
            xs_need_grad.get(k) ? grad_xs[next_grad++].mutable_data_ptr<scalar_t>() : nullptr;
      }
      backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          group, w.const_data_ptr<acc_t>(), g.const_data_ptr<scalar_t>(), n,
          weights_need_grad ? partials.mutable_data_ptr<acc_t>() : nullptr, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (weights_need_grad) {
      at::Tensor total = at::empty({K}, partials.options());
      reduce_partials_kernel<acc_t><<<K, kThreads, 0, stream>>>(
          partials.const_data_ptr<acc_t>(), blocks, K, total.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_weights = total.to(weights.scalar_type());
    }
  });
  return {grad_xs, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace darts_fast
