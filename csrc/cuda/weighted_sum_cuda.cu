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

// out = prior + sum over the group of w_k * x_k, all in acc_t. `prior` (null for the first group)
// holds the sum of the earlier groups in acc_t: with more than kGroup inputs, a float16/bfloat16
// sum is rounded to 16 bits only once, at the end, as on the CPU. prior may alias out.
template <typename scalar_t, typename acc_t, typename out_t>
__global__ void forward_kernel(Group<scalar_t> group, const acc_t* __restrict__ w,
                               const acc_t* prior, out_t* out, int64_t n) {
  acc_t w_k[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) w_k[j] = j < group.count ? w[group.first + j] : acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    acc_t acc = prior ? prior[i] : acc_t(0);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count) acc = weighted_sum_term(acc, w_k[j], static_cast<acc_t>(group.x[j][i]));
    }
    out[i] = static_cast<out_t>(acc);
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

// grad_w[k] = sum over blocks of partials[b, k], one block per k, in a fixed order and in double,
// as the CPU kernel finishes its chunk sums.
template <typename acc_t>
__global__ void reduce_partials_kernel(const acc_t* __restrict__ partials, int64_t num_blocks,
                                       int64_t K, double* __restrict__ grad_w) {
  __shared__ double shared[32];
  const int64_t k = blockIdx.x;
  double v = 0.0;
  for (int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) {
    v += static_cast<double>(partials[b * K + k]);
  }
  v = block_sum(v, shared);
  if (threadIdx.x == 0) grad_w[k] = v;
}

at::Tensor weighted_sum_cuda(at::TensorList xs, const at::Tensor& weights) {
  const ForwardArgs args = prepare_forward(xs, weights, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(args.out.device());
  const int64_t n = args.out.numel();
  if (n == 0) return args.out;
  const int K = static_cast<int>(xs.size());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.out.scalar_type(),
                                  "weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    // The running sum between groups, in acc_t: the output itself when it already is acc_t.
    acc_t* running = nullptr;
    at::Tensor running_sum;
    if (K > kGroup) {
      const at::ScalarType acc_type = args.weights.scalar_type();
      running_sum = args.out.scalar_type() == acc_type
                        ? args.out
                        : at::empty({n}, args.out.options().dtype(acc_type));
      running = running_sum.mutable_data_ptr<acc_t>();
    }
    for (int first = 0; first < K; first += kGroup) {
      Group<scalar_t> group{};
      group.first = first;
      group.count = std::min(kGroup, K - first);
      for (int j = 0; j < group.count; ++j) {
        group.x[j] = args.xs[first + j].const_data_ptr<scalar_t>();
      }
      const acc_t* w = args.weights.const_data_ptr<acc_t>();
      const acc_t* prior = first > 0 ? running : nullptr;
      if (first + kGroup >= K) {
        forward_kernel<scalar_t, acc_t, scalar_t>
            <<<blocks_for(n), kThreads, 0, stream>>>(group, w, prior, out, n);
      } else {
        forward_kernel<scalar_t, acc_t, acc_t>
            <<<blocks_for(n), kThreads, 0, stream>>>(group, w, prior, running, n);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return args.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(
    const at::Tensor& grad, at::TensorList xs, const at::Tensor& weights,
    const c10::List<bool>& xs_need_grad, bool weights_need_grad) {
  BackwardArgs args = prepare_backward(grad, xs, weights, xs_need_grad, weights_need_grad,
                                       c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(xs[0].device());
  if (args.nothing_to_compute) return {args.grad_xs, args.grad_weights};
  const int K = static_cast<int>(xs.size());
  const int64_t n = args.numel, blocks = blocks_for(n);
  at::Tensor partials;
  if (weights_need_grad) partials = at::empty({blocks, K}, args.weights.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int next_grad = 0;
    for (int first = 0; first < K; first += kGroup) {
      Group<scalar_t> group{};
      group.first = first;
      group.count = std::min(kGroup, K - first);
      for (int j = 0; j < group.count; ++j) {
        const int k = first + j;
        group.x[j] = weights_need_grad ? args.xs[k].const_data_ptr<scalar_t>() : nullptr;
        group.grad_x[j] = xs_need_grad.get(k)
                              ? args.grad_xs[next_grad++].mutable_data_ptr<scalar_t>()
                              : nullptr;
      }
      backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          group, args.weights.const_data_ptr<acc_t>(), args.grad.const_data_ptr<scalar_t>(), n,
          weights_need_grad ? partials.mutable_data_ptr<acc_t>() : nullptr, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (weights_need_grad) {
      at::Tensor total = at::empty({K}, partials.options().dtype(at::kDouble));
      reduce_partials_kernel<acc_t><<<K, kThreads, 0, stream>>>(
          partials.const_data_ptr<acc_t>(), blocks, K, total.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      args.grad_weights = total.to(weights.scalar_type());
    }
  });
  return {args.grad_xs, args.grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace darts_fast
