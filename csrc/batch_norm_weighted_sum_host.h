#pragma once

// Host-side argument checks and preparation for batch_norm_weighted_sum and its backward, shared
// by the CPU and CUDA implementations.
#include <ATen/ATen.h>
#include <ATen/TensorUtils.h>

#include "host_device.h"
#include "layout.h"

#include <optional>
#include <vector>

namespace darts_fast {

inline void check_batch_norm_weighted_sum_args(const char* op, at::TensorList ys,
                                               const at::Tensor& weights, const at::Tensor& mean,
                                               const at::Tensor& invstd,
                                               const c10::List<bool>& batch_stats) {
  TORCH_CHECK(!ys.empty(), op, ": ys must be a non-empty list of tensors");
  const at::Tensor& y0 = ys[0];
  const int64_t K = static_cast<int64_t>(ys.size());
  TORCH_CHECK(is_supported_float(y0.scalar_type()), op,
              ": ys must be float32, float64, float16 or bfloat16, got ", y0.scalar_type());
  TORCH_CHECK(y0.dim() == 4, op, ": ys must be 4-D (N, C, H, W), got shape ", y0.sizes());
  for (int64_t k = 1; k < K; ++k) {
    TORCH_CHECK(ys[k].sizes() == y0.sizes() && ys[k].scalar_type() == y0.scalar_type() &&
                    ys[k].device() == y0.device(),
                op, ": ys[", k, "] is ", ys[k].scalar_type(), " ", ys[k].sizes(), " on ",
                ys[k].device(), " but ys[0] is ", y0.scalar_type(), " ", y0.sizes(), " on ",
                y0.device());
  }
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == K, op,
              ": weights must be 1-D with one entry per tensor in ys (", K, "), got shape ",
              weights.sizes());
  const bool reduced = y0.scalar_type() == at::kHalf || y0.scalar_type() == at::kBFloat16;
  TORCH_CHECK(weights.scalar_type() == y0.scalar_type() ||
                  (reduced && weights.scalar_type() == at::kFloat),
              op, ": weights must have the dtype of ys (", y0.scalar_type(), ")",
              reduced ? " or float32" : "", ", got ", weights.scalar_type());
  const std::vector<int64_t> stats_shape{K, y0.size(1)};
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean},
                                std::pair<const char*, const at::Tensor&>{"invstd", invstd}}) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(stats_shape), op, ": ", name,
                " must have shape [K, C] = ", at::IntArrayRef(stats_shape),
                " (one row per tensor in ys, one entry per channel), got ", t.sizes());
    TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ",
                t.scalar_type());
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weights", weights},
                                std::pair<const char*, const at::Tensor&>{"mean", mean},
                                std::pair<const char*, const at::Tensor&>{"invstd", invstd}}) {
    TORCH_CHECK(t.device() == y0.device(), op, ": ", name, " is on ", t.device(),
                " but ys are on ", y0.device());
  }
  TORCH_CHECK(static_cast<int64_t>(batch_stats.size()) == K, op,
              ": batch_stats must have one flag per tensor in ys (", K, "), got ",
              batch_stats.size());
}

inline void check_groups(const char* op, int64_t groups, bool with_rest) {
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(with_rest == (groups > 1), op,
              with_rest ? ": rest needs groups >= 2 (the weighted sum is one group of the output)"
                        : ": groups > 1 needs rest, the other groups' channels");
}

// The shape of `y` (N, C, H, W) with `groups` times its channels: the output (groups), rest
// (groups - 1).
inline std::vector<int64_t> grouped_shape(const at::Tensor& y, int64_t groups) {
  std::vector<int64_t> shape = y.sizes().vec();
  shape[1] *= groups;
  return shape;
}

// rest (N, (groups - 1) * C, H, W) beside ys (N, C, H, W).
inline void check_rest(const char* op, const at::Tensor& rest, const at::Tensor& y0,
                       int64_t groups) {
  const std::vector<int64_t> shape = grouped_shape(y0, groups - 1);
  TORCH_CHECK(rest.sizes() == at::IntArrayRef(shape), op,
              ": rest must have shape [N, (groups - 1) * C, H, W] = ", at::IntArrayRef(shape),
              ", got ", rest.sizes());
  TORCH_CHECK(rest.scalar_type() == y0.scalar_type() && rest.device() == y0.device(), op,
              ": rest must have the dtype and device of ys (", y0.scalar_type(), ", ",
              y0.device(), "), got ", rest.scalar_type(), ", ", rest.device());
}

// A candidate output as the kernels index it: element (o, c, i) at (o * C + c) * inner + i, so a
// channel is `outer` runs of `inner` elements. NCHW is (N, C, H * W); channels_last is
// (N * H * W, C, 1).
struct ChannelGeometry {
  int64_t outer, C, inner;
  DARTS_HOST_DEVICE int64_t count() const { return outer * inner; }  // elements per channel
  DARTS_HOST_DEVICE int64_t numel() const { return outer * C * inner; }
};

// PC-DARTS' partial-channel output as the kernels index it (groups == 1: the plain weighted
// sum). The weighted sum's C channels and the (groups - 1) * C channels of `rest` are
// concatenated and shuffled in groups of `groups`: concatenated channel g * C + c lands on
// output channel c * groups + g. The output is (outer, C * groups, inner) in the layout of the
// ys; rest element (o, r, i) is at o * rest_outer + r * rest_channel + i.
struct Shuffle {
  int64_t groups = 1, rest_outer = 0, rest_channel = 0;

  DARTS_HOST_DEVICE int64_t numel(const ChannelGeometry& geo) const {
    return geo.numel() * groups;
  }
  // The output index of concatenated channel g * C + c at (o, i), and the rest's offset of
  // that channel (g >= 1).
  DARTS_HOST_DEVICE int64_t output_index(const ChannelGeometry& geo, int64_t o, int64_t c,
                                         int64_t g, int64_t i) const {
    return ((o * geo.C + c) * groups + g) * geo.inner + i;
  }
  DARTS_HOST_DEVICE int64_t rest_index(const ChannelGeometry& geo, int64_t o, int64_t c,
                                       int64_t g, int64_t i) const {
    return o * rest_outer + ((g - 1) * geo.C + c) * rest_channel + i;
  }
  // The output index of element e = (o * C + c) * inner + i of the weighted sum.
  DARTS_HOST_DEVICE int64_t sum_to_output(const ChannelGeometry& geo, int64_t e) const {
    const int64_t oc = e / geo.inner;
    return output_index(geo, oc / geo.C, oc % geo.C, 0, e % geo.inner);
  }
  // Output element f: true with the weighted sum's element in *e, or false with the offset of
  // its rest element in *rest.
  DARTS_HOST_DEVICE bool locate(const ChannelGeometry& geo, int64_t f, int64_t* e,
                                int64_t* rest) const {
    const int64_t i = f % geo.inner, q = f / geo.inner;  // q = (o * C + c) * groups + g
    const int64_t g = q % groups, oc = q / groups;
    if (g == 0) {
      *e = oc * geo.inner + i;
      return true;
    }
    *rest = rest_index(geo, oc / geo.C, oc % geo.C, g, i);
    return false;
  }
};

// The layout the kernels read and write: ys[0]'s when it is NCHW or channels_last, NCHW
// otherwise; with its geometry.
inline at::MemoryFormat kernel_layout(const at::Tensor& y) {
  if (y.is_contiguous(at::MemoryFormat::ChannelsLast) && !y.is_contiguous()) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline ChannelGeometry geometry_of(const at::Tensor& y, at::MemoryFormat layout) {
  const int64_t HW = y.size(2) * y.size(3);
  if (layout == at::MemoryFormat::ChannelsLast) return {y.size(0) * HW, y.size(1), 1};
  return {y.size(0), y.size(1), HW};
}

// Sets the shuffle's rest strides for `rest` read in place, when its (outer, channel, inner)
// indexing in `layout` has inner stride 1 (NCHW slices and channels_last slices of a channel
// range do); returns the tensor to read: rest itself, or else a copy in `layout`.
inline at::Tensor rest_in_layout(const at::Tensor& rest, at::MemoryFormat layout,
                                 Shuffle* shuffle) {
  const bool last = layout == at::MemoryFormat::ChannelsLast;
  const at::Tensor ordered = last ? rest.permute({0, 2, 3, 1}) : rest;
  const int64_t R = rest.size(1), HW = rest.size(2) * rest.size(3);
  const std::vector<int64_t> flat = last ? std::vector<int64_t>{rest.size(0) * HW, R, 1}
                                         : std::vector<int64_t>{rest.size(0), R, HW};
  const auto strides = at::detail::computeStride(ordered.sizes(), ordered.strides(), flat);
  if (strides && ((*strides)[2] == 1 || flat[2] == 1)) {
    shuffle->rest_outer = (*strides)[0];
    shuffle->rest_channel = (*strides)[1];
    return rest;
  }
  shuffle->rest_outer = R * flat[2];
  shuffle->rest_channel = flat[2];
  return rest.contiguous(layout);
}

inline std::vector<at::Tensor> in_layout(at::TensorList ts, at::MemoryFormat layout) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous(layout));
  return out;
}

// Forward outputs and kernel-ready inputs. mean/invstd start as the given statistics (in the
// accumulation dtype); the kernels overwrite the rows of batch statistics, and set their biased
// variance in `var` (zero elsewhere).
struct BatchNormWeightedSumForward {
  at::Tensor out, mean, invstd, var, weights;
  at::Tensor rest;  // undefined without one
  std::vector<at::Tensor> ys;
  ChannelGeometry geo;
  Shuffle shuffle;
};

inline BatchNormWeightedSumForward prepare_batch_norm_weighted_sum(
    at::TensorList ys, const at::Tensor& weights, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::List<bool>& batch_stats,
    const std::optional<at::Tensor>& rest, int64_t groups, c10::DeviceType device_type) {
  const char* op = "batch_norm_weighted_sum";
  check_batch_norm_weighted_sum_args(op, ys, weights, mean, invstd, batch_stats);
  check_groups(op, groups, rest.has_value());
  if (rest) check_rest(op, *rest, ys[0], groups);
  TORCH_CHECK(ys[0].device().type() == device_type, op, ": expected ",
              c10::DeviceTypeName(device_type), " tensors");
  BatchNormWeightedSumForward args;
  const at::MemoryFormat layout = kernel_layout(ys[0]);
  args.geo = geometry_of(ys[0], layout);
  args.shuffle.groups = groups;
  if (rest) args.rest = rest_in_layout(*rest, layout, &args.shuffle);
  const at::ScalarType acc = accumulate_type(ys[0].scalar_type());
  args.out = at::empty(grouped_shape(ys[0], groups), ys[0].options().memory_format(layout));
  args.mean = mean.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  args.invstd = invstd.to(acc, false, true).contiguous();
  args.var = at::zeros_like(args.mean);
  args.weights = weights.to(acc).contiguous();
  args.ys = in_layout(ys, layout);
  return args;
}

// Backward outputs and kernel-ready inputs.
struct BatchNormWeightedSumBackward {
  std::vector<at::Tensor> grad_ys;  // one per flagged tensor of ys, in order
  at::Tensor grad_weights;          // [0] when not wanted
  at::Tensor grad_rest;             // [0] when not wanted; dense in the layout of the ys else
  at::Tensor grad, mean, invstd, weights;
  std::vector<at::Tensor> ys;
  ChannelGeometry geo;
  Shuffle shuffle;  // its rest strides are grad_rest's
};

inline BatchNormWeightedSumBackward prepare_batch_norm_weighted_sum_backward(
    const at::Tensor& grad, at::TensorList ys, const at::Tensor& weights, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::List<bool>& batch_stats,
    const c10::List<bool>& ys_need_grad, bool weights_need_grad, int64_t groups,
    bool rest_need_grad, c10::DeviceType device_type) {
  const char* op = "batch_norm_weighted_sum_backward";
  check_batch_norm_weighted_sum_args(op, ys, weights, mean, invstd, batch_stats);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(!rest_need_grad || groups > 1, op, ": rest_need_grad needs groups >= 2");
  TORCH_CHECK(ys[0].device().type() == device_type, op, ": expected ",
              c10::DeviceTypeName(device_type), " tensors");
  const std::vector<int64_t> out_shape = grouped_shape(ys[0], groups);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape) &&
                  grad.scalar_type() == ys[0].scalar_type() && grad.device() == ys[0].device(),
              op, ": grad must have the dtype and device of ys and the output's shape (",
              at::IntArrayRef(out_shape), ", ", ys[0].scalar_type(), ", ", ys[0].device(),
              "), got ", grad.sizes(), ", ", grad.scalar_type(), ", ", grad.device());
  TORCH_CHECK(ys_need_grad.size() == ys.size(), op,
              ": ys_need_grad must have one flag per tensor in ys (", ys.size(), "), got ",
              ys_need_grad.size());
  BatchNormWeightedSumBackward args;
  const at::MemoryFormat layout = kernel_layout(ys[0]);
  args.geo = geometry_of(ys[0], layout);
  const at::ScalarType acc = accumulate_type(ys[0].scalar_type());
  for (size_t k = 0; k < ys.size(); ++k) {
    if (ys_need_grad.get(k)) {
      args.grad_ys.push_back(at::empty(ys[0].sizes(), ys[0].options().memory_format(layout)));
    }
  }
  args.grad_weights = weights_need_grad ? at::zeros({static_cast<int64_t>(ys.size())},
                                                    weights.options())
                                        : at::empty({0}, weights.options());
  args.shuffle.groups = groups;
  if (rest_need_grad) {
    const std::vector<int64_t> rest_shape = grouped_shape(ys[0], groups - 1);
    args.grad_rest = at::empty(rest_shape, ys[0].options().memory_format(layout));
    args.shuffle.rest_outer = rest_shape[1] * args.geo.inner;
    args.shuffle.rest_channel = args.geo.inner;
  } else {
    args.grad_rest = at::empty({0}, ys[0].options());
  }
  args.grad = grad.contiguous(layout);
  args.ys = in_layout(ys, layout);
  args.mean = mean.to(acc).contiguous();
  args.invstd = invstd.to(acc).contiguous();
  args.weights = weights.to(acc).contiguous();
  return args;
}

}  // namespace darts_fast
