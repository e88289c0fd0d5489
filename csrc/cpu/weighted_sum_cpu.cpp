// CPU kernels of darts_fast::weighted_sum and darts_fast::weighted_sum_backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "weighted_sum_host.h"
#include "weighted_sum_math.h"

namespace darts_fast {
namespace {

// Work is split into chunks of a fixed size, independent of the thread count, and the weight
// gradient is reduced per chunk and then over chunks in order: the result has the same bits on
// every run and with any number of threads.
constexpr int64_t kChunk = 16384;
// Elements the forward sums together: long runs per tensor for the prefetcher, and an
// accumulator that stays in L1.
constexpr int64_t kBlock = 1024;
constexpr int64_t kLanes = 16;

int64_t num_chunks(int64_t n) {
  return (n + kChunk - 1) / kChunk;
}

template <typename scalar_t>
void forward_kernel(const std::vector<const scalar_t*>& xs, const at::opmath_type<scalar_t>* w,
                    scalar_t* out, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = static_cast<int64_t>(xs.size());
  at::parallel_for(0, num_chunks(n), 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    acc_t acc[kBlock];
    for (int64_t start = chunk_begin * kChunk; start < std::min(n, chunk_end * kChunk);
         start += kBlock) {
      const int64_t len = std::min(kBlock, n - start);
      for (int64_t j = 0; j < len; ++j) acc[j] = acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* x = xs[k] + start;
        const acc_t w_k = w[k];
        for (int64_t j = 0; j < len; ++j) {
          acc[j] = weighted_sum_term(acc[j], w_k, static_cast<acc_t>(x[j]));
        }
      }
      for (int64_t j = 0; j < len; ++j) out[start + j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

// One candidate over one chunk: grad_x = w_k * g (if kInputGrad) and the chunk's partial sum of
// g * x (if kWeightGrad), in a single pass. The chunk of g stays in cache across the K calls.
template <bool kInputGrad, bool kWeightGrad, typename scalar_t>
at::opmath_type<scalar_t> backward_chunk(const scalar_t* __restrict__ g,
                                         const scalar_t* __restrict__ x,
                                         scalar_t* __restrict__ grad_x,
                                         at::opmath_type<scalar_t> w_k, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  // Independent partial sums: the loop vectorizes without reassociating a single sum.
  acc_t lanes[kLanes] = {};
  const auto step = [&](int64_t i, int64_t lane) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    if (kInputGrad) grad_x[i] = static_cast<scalar_t>(weighted_sum_input_grad(w_k, gi));
    if (kWeightGrad) {
      lanes[lane] = weighted_sum_weight_grad_term(lanes[lane], gi, static_cast<acc_t>(x[i]));
    }
  };
  const int64_t full = len - len % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) step(i + l, l);
  }
  for (int64_t i = full; i < len; ++i) step(i, i - full);
  acc_t sum = acc_t(0);
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// grad_xs[k] is null where that gradient is not wanted; partials is null when the weight
// gradient is not wanted, else it receives one partial sum per (chunk, k).
template <typename scalar_t>
void backward_kernel(const scalar_t* g, const std::vector<const scalar_t*>& xs,
                     const at::opmath_type<scalar_t>* w, const std::vector<scalar_t*>& grad_xs,
                     at::opmath_type<scalar_t>* partials, int64_t n) {
  const int64_t K = static_cast<int64_t>(grad_xs.size());
  at::parallel_for(0, num_chunks(n), 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t start = chunk * kChunk;
      const int64_t len = std::min(kChunk, n - start);
      for (int64_t k = 0; k < K; ++k) {
        scalar_t* grad_x = grad_xs[k] ? grad_xs[k] + start : nullptr;
        if (!partials) {
          if (grad_x) {
            backward_chunk<true, false, scalar_t>(g + start, nullptr, grad_x, w[k], len);
          }
          continue;
        }
        const scalar_t* x = xs[k] + start;
        partials[chunk * K + k] =
            grad_x ? backward_chunk<true, true, scalar_t>(g + start, x, grad_x, w[k], len)
                   : backward_chunk<false, true, scalar_t>(g + start, x, nullptr, w[k], len);
      }
    }
  });
}

// Sums the [chunks, K] partials over chunks, in chunk order and in float64: the same bits on
// every run, and no precision lost over many chunks.
at::Tensor sum_chunks_in_order(const at::Tensor& partials) {
  const at::Tensor p = partials.to(at::kDouble).contiguous();
  const int64_t chunks = p.size(0), K = p.size(1);
  at::Tensor total = at::zeros({K}, p.options());
  const double* src = p.const_data_ptr<double>();
  double* dst = total.mutable_data_ptr<double>();
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t k = 0; k < K; ++k) dst[k] += src[c * K + k];
  }
  return total;
}

at::Tensor weighted_sum_cpu(at::TensorList xs, const at::Tensor& weights) {
  const ForwardArgs args = prepare_forward(xs, weights, c10::DeviceType::CPU);
  const int64_t n = args.out.numel();
  if (n == 0) return args.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.out.scalar_type(),
                                  "weighted_sum_cpu", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& x : args.xs) ptrs.push_back(x.const_data_ptr<scalar_t>());
    forward_kernel<scalar_t>(ptrs, args.weights.const_data_ptr<at::opmath_type<scalar_t>>(),
                             args.out.mutable_data_ptr<scalar_t>(), n);
  });
  return args.out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad, at::TensorList xs, const at::Tensor& weights,
    const c10::List<bool>& xs_need_grad, bool weights_need_grad) {
  BackwardArgs args = prepare_backward(grad, xs, weights, xs_need_grad, weights_need_grad,
                                       c10::DeviceType::CPU);
  if (args.nothing_to_compute) return {args.grad_xs, args.grad_weights};
  const int64_t K = static_cast<int64_t>(xs.size()), n = args.numel;
  at::Tensor partials;
  if (weights_need_grad) partials = at::empty({num_chunks(n), K}, args.weights.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> x_ptrs(K, nullptr);
    std::vector<scalar_t*> gx_ptrs(K, nullptr);
    for (int64_t k = 0, next = 0; k < K; ++k) {
      if (weights_need_grad) x_ptrs[k] = args.xs[k].const_data_ptr<scalar_t>();
      if (xs_need_grad.get(k)) gx_ptrs[k] = args.grad_xs[next++].mutable_data_ptr<scalar_t>();
    }
    backward_kernel<scalar_t>(args.grad.const_data_ptr<scalar_t>(), x_ptrs,
                              args.weights.const_data_ptr<acc_t>(), gx_ptrs,
                              weights_need_grad ? partials.mutable_data_ptr<acc_t>() : nullptr, n);
  });
  if (weights_need_grad) {
    args.grad_weights = sum_chunks_in_order(partials).to(weights.scalar_type());
  }
  return {args.grad_xs, args.grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace darts_fast
