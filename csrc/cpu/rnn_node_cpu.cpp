// CPU kernels of darts_fast::rnn_node and darts_fast::rnn_node_backward: torch's vectorised
// sigmoid and tanh over the node's pre-activations, then one pass of the shared formulas.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "rnn_node_host.h"
#include "rnn_node_math.h"

namespace darts_fast {
namespace {

constexpr int K = kRnnNodeActivations;
// The B * H elements are split into chunks of a fixed size, independent of the thread count, and
// the probability gradient is reduced per chunk and then over chunks in order: the same bits on
// every run and with any number of threads.
constexpr int64_t kChunk = 16384;
// Elements handled together: an accumulator that stays in L1 while the J predecessors stream by,
// and short float partial sums of the probability gradient before they join the chunk's double.
constexpr int64_t kBlock = 1024;

int64_t num_chunks(int64_t n) {
  return (n + kChunk - 1) / kChunk;
}

// Calls fn(start, b, n0, len) for runs of at most kBlock elements of [begin, end) (flat indices
// b * H + n of [B, H]) that stay within one row, so that each run is contiguous in ch too.
// sigmoid(c), tanh(h) and sigmoid(h) of every predecessor, [J, B, H] each in the accumulation
// type, by torch's vectorised kernels (the same formulas: sigmoid is 1 / (1 + exp(-x)) there too).
// Transient: made in each pass, never kept for the backward.
struct Transcendentals {
  at::Tensor sc, t, sg;
};

Transcendentals transcendentals(const RnnNodeArgs& args) {
  const auto acc = at::toOpMathType(args.ch.scalar_type());
  const at::Tensor ch = args.ch.to(acc);
  const at::Tensor h = ch.narrow(2, args.H, args.H);
  return {at::sigmoid(ch.narrow(2, 0, args.H)).contiguous(), at::tanh(h).contiguous(),
          at::sigmoid(h).contiguous()};
}

template <typename Fn>
void for_each_run(int64_t begin, int64_t end, int64_t H, const Fn& fn) {
  for (int64_t start = begin; start < end;) {
    const int64_t b = start / H, n0 = start - b * H;
    const int64_t len = std::min({kBlock, end - start, H - n0});
    fn(start, b, n0, len);
    start += len;
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* states, const scalar_t* ch,
                    const at::opmath_type<scalar_t>* probs,
                    const at::opmath_type<scalar_t>* sc_all,
                    const at::opmath_type<scalar_t>* t_all,
                    const at::opmath_type<scalar_t>* sg_all, scalar_t* out, int64_t J, int64_t B,
                    int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * H;
  at::parallel_for(0, num_chunks(n), 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    acc_t acc[kBlock];
    const int64_t end = std::min(n, chunk_end * kChunk);
    for_each_run(chunk_begin * kChunk, end, H, [&](int64_t start, int64_t b, int64_t n0,
                                                   int64_t len) {
      for (int64_t i = 0; i < len; ++i) acc[i] = acc_t(0);
      // Predecessors in order: each output element sums them in the same order on every run.
      for (int64_t j = 0; j < J; ++j) {
        const acc_t* p = probs + j * K;
        const scalar_t* s = states + j * n + start;
        const scalar_t* h = ch + (j * B + b) * 2 * H + n0 + H;
        const acc_t *sc = sc_all + j * n + start, *t = t_all + j * n + start,
                    *sg = sg_all + j * n + start;
        for (int64_t i = 0; i < len; ++i) {
          acc[i] = rnn_node_term_of(acc[i], p, static_cast<acc_t>(s[i]), sc[i],
                                    static_cast<acc_t>(h[i]), t[i], sg[i]);
        }
      }
      for (int64_t i = 0; i < len; ++i) out[start + i] = static_cast<scalar_t>(acc[i]);
    });
  });
}

// grad_states and grad_ch are null where not wanted; partials is null when the probability
// gradient is not wanted, else it receives one sum per (chunk, j, k), [chunks, J, K].
template <typename scalar_t>
void backward_kernel(const scalar_t* g, const scalar_t* states, const scalar_t* ch,
                     const at::opmath_type<scalar_t>* probs,
                     const at::opmath_type<scalar_t>* sc_all,
                     const at::opmath_type<scalar_t>* t_all,
                     const at::opmath_type<scalar_t>* sg_all, scalar_t* grad_states,
                     scalar_t* grad_ch, double* partials, int64_t J, int64_t B, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * H;
  at::parallel_for(0, num_chunks(n), 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      double* chunk_partials = partials ? partials + chunk * J * K : nullptr;
      if (chunk_partials) std::fill(chunk_partials, chunk_partials + J * K, 0.0);
      const int64_t end = std::min(n, (chunk + 1) * kChunk);
      for_each_run(chunk * kChunk, end, H, [&](int64_t start, int64_t b, int64_t n0,
                                               int64_t len) {
        for (int64_t j = 0; j < J; ++j) {
          const acc_t* p = probs + j * K;
          const int64_t s_off = j * n + start, c_off = (j * B + b) * 2 * H + n0;
          acc_t dp[K] = {};
          for (int64_t i = 0; i < len; ++i) {
            const RnnNodeGrads<acc_t> d = rnn_node_grads_of(
                static_cast<acc_t>(g[start + i]), p, static_cast<acc_t>(states[s_off + i]),
                sc_all[s_off + i], static_cast<acc_t>(ch[c_off + H + i]), t_all[s_off + i],
                sg_all[s_off + i], dp);
            if (grad_states) grad_states[s_off + i] = static_cast<scalar_t>(d.ds);
            if (grad_ch) {
              grad_ch[c_off + i] = static_cast<scalar_t>(d.dc);
              grad_ch[c_off + H + i] = static_cast<scalar_t>(d.dh);
            }
          }
          if (chunk_partials) {
            for (int k = 0; k < K; ++k) chunk_partials[j * K + k] += static_cast<double>(dp[k]);
          }
        }
      });
    }
  });
}

// Sums the [chunks, J * K] partials over chunks, in chunk order.
at::Tensor sum_chunks_in_order(const at::Tensor& partials) {
  const int64_t chunks = partials.size(0), m = partials.size(1);
  at::Tensor total = at::zeros({m}, partials.options());
  const double* src = partials.const_data_ptr<double>();
  double* dst = total.mutable_data_ptr<double>();
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t i = 0; i < m; ++i) dst[i] += src[c * m + i];
  }
  return total;
}

at::Tensor rnn_node_cpu(const at::Tensor& states, const at::Tensor& ch, const at::Tensor& probs) {
  const RnnNodeArgs args = prepare_rnn_node("rnn_node", states, ch, probs, c10::DeviceType::CPU);
  at::Tensor out = new_rnn_node_output(args);
  if (out.numel() == 0) return out;
  const Transcendentals tr = transcendentals(args);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "rnn_node_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(args.states.const_data_ptr<scalar_t>(),
                             args.ch.const_data_ptr<scalar_t>(),
                             args.probs.const_data_ptr<acc_t>(), tr.sc.const_data_ptr<acc_t>(),
                             tr.t.const_data_ptr<acc_t>(), tr.sg.const_data_ptr<acc_t>(),
                             out.mutable_data_ptr<scalar_t>(), args.J, args.B, args.H);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_node_backward_cpu(
    const at::Tensor& grad, const at::Tensor& states, const at::Tensor& ch,
    const at::Tensor& probs, std::array<bool, 3> needs_grad) {
  RnnNodeBackwardArgs args =
      prepare_rnn_node_backward(grad, states, ch, probs, needs_grad, c10::DeviceType::CPU);
  if (args.nothing_to_compute) return {args.grad_states, args.grad_ch, args.grad_probs};
  const RnnNodeArgs& in = args.in;
  at::Tensor partials;
  if (needs_grad[2]) {
    partials = at::empty({num_chunks(in.B * in.H), in.J * K},
                         in.probs.options().dtype(at::kDouble));
  }
  const Transcendentals tr = transcendentals(in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.states.scalar_type(),
                                  "rnn_node_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t>(
        args.grad.const_data_ptr<scalar_t>(), in.states.const_data_ptr<scalar_t>(),
        in.ch.const_data_ptr<scalar_t>(), in.probs.const_data_ptr<acc_t>(),
        tr.sc.const_data_ptr<acc_t>(), tr.t.const_data_ptr<acc_t>(),
        tr.sg.const_data_ptr<acc_t>(),
        needs_grad[0] ? args.grad_states.mutable_data_ptr<scalar_t>() : nullptr,
        needs_grad[1] ? args.grad_ch.mutable_data_ptr<scalar_t>() : nullptr,
        needs_grad[2] ? partials.mutable_data_ptr<double>() : nullptr, in.J, in.B, in.H);
  });
  if (needs_grad[2]) {
    args.grad_probs.copy_(sum_chunks_in_order(partials).view({in.J, K}));
  }
  return {args.grad_states, args.grad_ch, args.grad_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CPU, m) {
  m.impl("rnn_node", &rnn_node_cpu);
  m.impl("rnn_node_backward", &rnn_node_backward_cpu);
}

}  // namespace darts_fast
