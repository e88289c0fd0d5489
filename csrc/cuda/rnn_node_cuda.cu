// CUDA kernels of darts_fast::rnn_node and darts_fast::rnn_node_backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "cuda/block_reduce.cuh"
#include "rnn_node_host.h"
#include "rnn_node_math.h"

namespace darts_fast {
namespace {

constexpr int K = kRnnNodeActivations;
constexpr int kThreads = 256;
// A fixed grid cap (not derived from the device) keeps the probability-gradient reduction order,
// and so its bits, the same on every run and every GPU.
constexpr int64_t kMaxBlocks = 2048;
constexpr int64_t kMaxGridY = 65535;

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// One thread per output element (grid-stride), summing the J predecessors in order.
template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ states,
                               const scalar_t* __restrict__ ch, const acc_t* __restrict__ probs,
                               scalar_t* __restrict__ out, int64_t J, int64_t B, int64_t H) {
  const int64_t n = B * H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int64_t b = e / H, col = e - b * H;
    acc_t acc = acc_t(0);
    for (int64_t j = 0; j < J; ++j) {
      const int64_t c_off = (j * B + b) * 2 * H + col;
      acc = rnn_node_term(acc, probs + j * K, static_cast<acc_t>(states[j * n + e]),
                          static_cast<acc_t>(ch[c_off]), static_cast<acc_t>(ch[c_off + H]));
    }
    out[e] = static_cast<scalar_t>(acc);
  }
}

// blockIdx.y picks the predecessor j (each j's gradients are its own: no sum over j), blockIdx.x
// a grid-stride share of the B * H elements. partials: [J, gridDim.x, K] per-block sums of
// g * u_k, or null when the probability gradient is not wanted.
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ g,
                                const scalar_t* __restrict__ states,
                                const scalar_t* __restrict__ ch, const acc_t* __restrict__ probs,
                                scalar_t* __restrict__ grad_states,
                                scalar_t* __restrict__ grad_ch, acc_t* __restrict__ partials,
                                int64_t J, int64_t B, int64_t H) {
  __shared__ acc_t shared[32];
  const int64_t n = B * H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = blockIdx.y; j < J; j += gridDim.y) {
    acc_t p[K], dp[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      p[k] = probs[j * K + k];
      dp[k] = acc_t(0);
    }
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
         e += stride) {
      const int64_t b = e / H, col = e - b * H;
      const int64_t s_off = j * n + e, c_off = (j * B + b) * 2 * H + col;
      const RnnNodeGrads<acc_t> d = rnn_node_grads(
          static_cast<acc_t>(g[e]), p, static_cast<acc_t>(states[s_off]),
          static_cast<acc_t>(ch[c_off]), static_cast<acc_t>(ch[c_off + H]), dp);
      if (grad_states) grad_states[s_off] = static_cast<scalar_t>(d.ds);
      if (grad_ch) {
        grad_ch[c_off] = static_cast<scalar_t>(d.dc);
        grad_ch[c_off + H] = static_cast<scalar_t>(d.dh);
      }
    }
    if (partials) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const acc_t total = block_sum(dp[k], shared);
        if (threadIdx.x == 0) partials[(j * gridDim.x + blockIdx.x) * K + k] = total;
      }
    }
  }
}

// grad_probs[j, k] = sum over blocks of partials[j, block, k], one block per (j, k), in a fixed
// order and in double, as the CPU kernel finishes its chunk sums.
template <typename acc_t>
__global__ void reduce_partials_kernel(const acc_t* __restrict__ partials, int64_t num_blocks,
                                       double* __restrict__ total) {
  __shared__ double shared[32];
  const int64_t jk = blockIdx.x, j = jk / K, k = jk - j * K;
  double v = 0.0;
  for (int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) {
    v += static_cast<double>(partials[(j * num_blocks + b) * K + k]);
  }
  v = block_sum(v, shared);
  if (threadIdx.x == 0) total[jk] = v;
}

at::Tensor rnn_node_cuda(const at::Tensor& states, const at::Tensor& ch, const at::Tensor& probs) {
  const RnnNodeArgs args = prepare_rnn_node("rnn_node", states, ch, probs, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(states.device());
  at::Tensor out = new_rnn_node_output(args);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "rnn_node_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        args.states.const_data_ptr<scalar_t>(), args.ch.const_data_ptr<scalar_t>(),
        args.probs.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), args.J, args.B,
        args.H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_node_backward_cuda(
    const at::Tensor& grad, const at::Tensor& states, const at::Tensor& ch,
    const at::Tensor& probs, std::array<bool, 3> needs_grad) {
  RnnNodeBackwardArgs args =
      prepare_rnn_node_backward(grad, states, ch, probs, needs_grad, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(states.device());
  if (args.nothing_to_compute) return {args.grad_states, args.grad_ch, args.grad_probs};
  const RnnNodeArgs& in = args.in;
  const int64_t n = in.B * in.H, blocks = blocks_for(n);
  const dim3 grid(static_cast<unsigned>(blocks),
                  static_cast<unsigned>(std::min<int64_t>(in.J, kMaxGridY)));
  at::Tensor partials;
  if (needs_grad[2]) partials = at::empty({in.J, blocks, K}, in.probs.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.states.scalar_type(),
                                  "rnn_node_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        args.grad.const_data_ptr<scalar_t>(), in.states.const_data_ptr<scalar_t>(),
        in.ch.const_data_ptr<scalar_t>(), in.probs.const_data_ptr<acc_t>(),
        needs_grad[0] ? args.grad_states.mutable_data_ptr<scalar_t>() : nullptr,
        needs_grad[1] ? args.grad_ch.mutable_data_ptr<scalar_t>() : nullptr,
        needs_grad[2] ? partials.mutable_data_ptr<acc_t>() : nullptr, in.J, in.B, in.H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (needs_grad[2]) {
      at::Tensor total = at::empty({in.J, K}, partials.options().dtype(at::kDouble));
      reduce_partials_kernel<acc_t><<<static_cast<unsigned>(in.J * K), kThreads, 0, stream>>>(
          partials.const_data_ptr<acc_t>(), blocks, total.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      args.grad_probs.copy_(total);
    }
  });
  return {args.grad_states, args.grad_ch, args.grad_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CUDA, m) {
  m.impl("rnn_node", &rnn_node_cuda);
  m.impl("rnn_node_backward", &rnn_node_backward_cuda);
}

}  // namespace darts_fast
