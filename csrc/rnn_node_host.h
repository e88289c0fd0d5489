#pragma once

// Host-side argument checks and preparation for rnn_node and its backward, shared by the CPU and
// CUDA implementations.
#include <ATen/ATen.h>

#include <array>

#include "layout.h"
#include "rnn_node_math.h"

namespace darts_fast {

inline void check_rnn_node_args(const char* op, const at::Tensor& states, const at::Tensor& ch,
                                const at::Tensor& probs) {
  TORCH_CHECK(states.dim() == 3, op, ": states must be 3-D [J, B, H], got shape ",
              states.sizes());
  TORCH_CHECK(states.size(0) >= 1, op,
              ": states must hold at least one predecessor state (J >= 1), got shape ",
              states.sizes());
  TORCH_CHECK(is_supported_float(states.scalar_type()), op,
              ": states must be float32, float64, float16 or bfloat16, got ",
              states.scalar_type());
  const int64_t J = states.size(0), B = states.size(1), H = states.size(2);
  TORCH_CHECK(ch.dim() == 3 && ch.size(0) == J && ch.size(1) == B && ch.size(2) == 2 * H, op,
              ": ch must have shape [J, B, 2H] = [", J, ", ", B, ", ", 2 * H,
              "] (c then h of every predecessor state), got ", ch.sizes());
  TORCH_CHECK(ch.scalar_type() == states.scalar_type(), op, ": ch has dtype ", ch.scalar_type(),
              " but states have dtype ", states.scalar_type());
  TORCH_CHECK(probs.dim() == 2 && probs.size(0) == J && probs.size(1) == kRnnNodeActivations, op,
              ": probs must have shape [J, 4] = [", J,
              ", 4] (tanh, relu, sigmoid, identity per predecessor), got ", probs.sizes());
  const bool reduced = states.scalar_type() == at::kHalf || states.scalar_type() == at::kBFloat16;
  TORCH_CHECK(probs.scalar_type() == states.scalar_type() ||
                  (reduced && probs.scalar_type() == at::kFloat),
              op, ": probs must have the dtype of states (", states.scalar_type(), ")",
              reduced ? " or float32" : "", ", got ", probs.scalar_type());
  TORCH_CHECK(ch.device() == states.device(), op, ": ch is on ", ch.device(),
              " but states are on ", states.device());
  TORCH_CHECK(probs.device() == states.device(), op, ": probs is on ", probs.device(),
              " but states are on ", states.device());
}

// Kernel-ready arguments: states and ch contiguous, probs contiguous in the accumulation dtype.
struct RnnNodeArgs {
  at::Tensor states, ch, probs;
  int64_t J = 0, B = 0, H = 0;
};

inline RnnNodeArgs prepare_rnn_node(const char* op, const at::Tensor& states,
                                    const at::Tensor& ch, const at::Tensor& probs,
                                    c10::DeviceType device_type) {
  check_rnn_node_args(op, states, ch, probs);
  TORCH_CHECK(states.device().type() == device_type, op, ": expected ",
              c10::DeviceTypeName(device_type), " tensors");
  RnnNodeArgs args;
  args.J = states.size(0);
  args.B = states.size(1);
  args.H = states.size(2);
  args.states = states.contiguous();
  args.ch = ch.contiguous();
  args.probs = probs.to(accumulate_type(states.scalar_type())).contiguous();
  return args;
}

inline at::Tensor new_rnn_node_output(const RnnNodeArgs& args) {
  return at::empty({args.B, args.H}, args.states.options());
}

// Outputs of rnn_node_backward: each gradient is empty ([0]) where its flag is false; grad_probs
// is zero-filled where it is wanted and there is nothing to sum (B * H = 0).
struct RnnNodeBackwardArgs {
  RnnNodeArgs in;
  at::Tensor grad;  // contiguous [B, H]
  at::Tensor grad_states, grad_ch, grad_probs;
  bool nothing_to_compute = false;
};

inline RnnNodeBackwardArgs prepare_rnn_node_backward(const at::Tensor& grad,
                                                     const at::Tensor& states,
                                                     const at::Tensor& ch,
                                                     const at::Tensor& probs,
                                                     std::array<bool, 3> needs_grad,
                                                     c10::DeviceType device_type) {
  const char* op = "rnn_node_backward";
  RnnNodeBackwardArgs args;
  args.in = prepare_rnn_node(op, states, ch, probs, device_type);
  const int64_t B = args.in.B, H = args.in.H;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == H, op,
              ": grad must have the output's shape [B, H] = [", B, ", ", H, "], got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == states.scalar_type() && grad.device() == states.device(), op,
              ": grad must have the dtype and device of states (", states.scalar_type(), ", ",
              states.device(), "), got ", grad.scalar_type(), ", ", grad.device());
  const auto empty = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  args.grad_states = needs_grad[0] ? at::empty(states.sizes(), states.options()) : empty(states);
  args.grad_ch = needs_grad[1] ? at::empty(ch.sizes(), ch.options()) : empty(ch);
  args.grad_probs = needs_grad[2] ? at::empty(probs.sizes(), probs.options()) : empty(probs);
  args.nothing_to_compute = B * H == 0 || !(needs_grad[0] || needs_grad[1] || needs_grad[2]);
  if (args.nothing_to_compute) {
    if (needs_grad[2]) args.grad_probs.zero_();
    return args;
  }
  args.grad = grad.contiguous();
  return args;
}

}  // namespace darts_fast
