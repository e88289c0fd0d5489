#pragma once

// Host-side argument checks and layout handling for weighted_sum, shared by the CPU and CUDA
// implementations.
#include <ATen/ATen.h>

#include "layout.h"

#include <vector>

namespace darts_fast {

inline void check_weighted_sum_args(const char* op, at::TensorList xs, const at::Tensor& weights) {
  TORCH_CHECK(!xs.empty(), op, ": xs must be a non-empty list of tensors");
  const at::Tensor& x0 = xs[0];
  TORCH_CHECK(is_supported_float(x0.scalar_type()), op,
              ": xs must be float32, float64, float16 or bfloat16, got ", x0.scalar_type());
  for (size_t k = 1; k < xs.size(); ++k) {
    TORCH_CHECK(xs[k].sizes() == x0.sizes(), op, ": xs[", k, "] has shape ", xs[k].sizes(),
                " but xs[0] has shape ", x0.sizes(), "; all candidate outputs must have one shape");
    TORCH_CHECK(xs[k].scalar_type() == x0.scalar_type(), op, ": xs[", k, "] has dtype ",
                xs[k].scalar_type(), " but xs[0] has dtype ", x0.scalar_type());
    TORCH_CHECK(xs[k].device() == x0.device(), op, ": xs[", k, "] is on ", xs[k].device(),
                " but xs[0] is on ", x0.device());
  }
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(xs.size()), op,
              ": weights must be a 1-D tensor with one entry per tensor in xs (length ", xs.size(),
              "), got shape ", weights.sizes());
  TORCH_CHECK(weights.device() == x0.device(), op, ": weights is on ", weights.device(),
              " but xs are on ", x0.device());
  const bool reduced = x0.scalar_type() == at::kHalf || x0.scalar_type() == at::kBFloat16;
  TORCH_CHECK(weights.scalar_type() == x0.scalar_type() ||
                  (reduced && weights.scalar_type() == at::kFloat),
              op, ": weights must have the dtype of xs (", x0.scalar_type(), ")",
              reduced ? " or float32" : "", ", got ", weights.scalar_type());
}

// Forward and backward outputs take xs[0]'s layout when it is dense (contiguous, channels_last,
// ...), the default layout otherwise; at::empty_like and torch.empty_like agree on this.
inline at::Tensor new_like_first(at::TensorList xs) {
  return at::empty_like(xs[0]);
}

inline void check_backward_args(const char* op, const at::Tensor& grad, at::TensorList xs,
                                const at::Tensor& weights, const c10::List<bool>& xs_need_grad) {
  check_weighted_sum_args(op, xs, weights);
  TORCH_CHECK(grad.sizes() == xs[0].sizes(), op, ": grad has shape ", grad.sizes(),
              " but xs have shape ", xs[0].sizes());
  TORCH_CHECK(grad.scalar_type() == xs[0].scalar_type() && grad.device() == xs[0].device(), op,
              ": grad must have the dtype and device of xs (", xs[0].scalar_type(), ", ",
              xs[0].device(), "), got ", grad.scalar_type(), ", ", grad.device());
  TORCH_CHECK(xs_need_grad.size() == xs.size(), op, ": xs_need_grad must have one flag per tensor ",
              "in xs (", xs.size(), "), got ", xs_need_grad.size());
}

// Kernel-ready arguments of weighted_sum: the output, the inputs in its layout, the weights in
// the accumulation dtype.
struct ForwardArgs {
  at::Tensor out;
  std::vector<at::Tensor> xs;
  at::Tensor weights;
};

inline ForwardArgs prepare_forward(at::TensorList xs_in, const at::Tensor& weights,
                                   c10::DeviceType device_type) {
  check_weighted_sum_args("weighted_sum", xs_in, weights);
  TORCH_CHECK(xs_in[0].device().type() == device_type, "weighted_sum: expected ",
              c10::DeviceTypeName(device_type), " tensors");
  ForwardArgs args;
  args.out = new_like_first(xs_in);
  if (args.out.numel() > 0) {
    args.xs = in_layout_of(xs_in, args.out);
    args.weights = weights.to(accumulate_type(args.out.scalar_type())).contiguous();
  }
  return args;
}

// Outputs and kernel-ready arguments of weighted_sum_backward.
struct BackwardArgs {
  std::vector<at::Tensor> grad_xs;  // one per flagged tensor of xs, in order
  at::Tensor grad_weights;          // [0] when not wanted; [K], set by the kernel otherwise
  at::Tensor grad;                  // in the common layout
  std::vector<at::Tensor> xs;       // in the common layout; empty without the weight gradient
  at::Tensor weights;               // in the accumulation dtype
  int64_t numel = 0;
  bool nothing_to_compute = false;
};

inline BackwardArgs prepare_backward(const at::Tensor& grad_in, at::TensorList xs_in,
                                     const at::Tensor& weights,
                                     const c10::List<bool>& xs_need_grad,
                                     bool weights_need_grad, c10::DeviceType device_type) {
  const char* op = "weighted_sum_backward";
  check_backward_args(op, grad_in, xs_in, weights, xs_need_grad);
  TORCH_CHECK(xs_in[0].device().type() == device_type, op, ": expected ",
              c10::DeviceTypeName(device_type), " tensors");
  const int64_t K = static_cast<int64_t>(xs_in.size());
  BackwardArgs args;
  for (int64_t k = 0; k < K; ++k) {
    if (xs_need_grad.get(k)) args.grad_xs.push_back(new_like_first(xs_in));
  }
  // The gradients already carry the common layout; allocate a layout template only without them.
  const at::Tensor like = args.grad_xs.empty() ? new_like_first(xs_in) : args.grad_xs[0];
  args.numel = like.numel();
  args.nothing_to_compute = args.numel == 0 || (args.grad_xs.empty() && !weights_need_grad);
  if (!weights_need_grad) {
    args.grad_weights = at::empty({0}, weights.options());
  } else if (args.nothing_to_compute) {  // empty inputs: a sum over no elements
    args.grad_weights = at::zeros({K}, weights.options());
  }
  if (args.nothing_to_compute) return args;
  args.grad = in_layout_of(grad_in, like);
  if (weights_need_grad) args.xs = in_layout_of(xs_in, like);
  args.weights = weights.to(accumulate_type(like.scalar_type())).contiguous();
  return args;
}

}  // namespace darts_fast
