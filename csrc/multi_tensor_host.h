#pragma once

// Host-side argument checks for the multi-tensor ops, shared by the CPU and CUDA implementations.
#include <ATen/ATen.h>

#include <initializer_list>
#include <vector>

#include "layout.h"

namespace darts_fast {

struct NamedTensorList {
  const char* name;
  at::TensorList tensors;
};

// The first list is the reference: every other list must have its length, and tensor i of every
// list the shape of reference[i]. All tensors share one floating dtype and one device; a list
// that mixes them is rejected (callers group by dtype and device first).
inline void check_tensor_lists(const char* op, std::initializer_list<NamedTensorList> lists) {
  const NamedTensorList& ref = *lists.begin();
  for (const auto& list : lists) {
    TORCH_CHECK(list.tensors.size() == ref.tensors.size(), op, ": ", list.name, " has ",
                list.tensors.size(), " tensors but ", ref.name, " has ", ref.tensors.size());
  }
  if (ref.tensors.empty()) return;
  const at::Tensor& t0 = ref.tensors[0];
  TORCH_CHECK(is_supported_float(t0.scalar_type()), op, ": ", ref.name,
              " must hold float32, float64, float16 or bfloat16 tensors, got ", t0.scalar_type());
  for (const auto& list : lists) {
    for (size_t i = 0; i < list.tensors.size(); ++i) {
      const at::Tensor& t = list.tensors[i];
      TORCH_CHECK(t.scalar_type() == t0.scalar_type(), op, ": ", list.name, "[", i, "] has dtype ",
                  t.scalar_type(), " but ", ref.name, "[0] has dtype ", t0.scalar_type(),
                  "; one call takes one dtype");
      TORCH_CHECK(t.device() == t0.device(), op, ": ", list.name, "[", i, "] is on ", t.device(),
                  " but ", ref.name, "[0] is on ", t0.device(), "; one call takes one device");
      TORCH_CHECK(t.sizes() == ref.tensors[i].sizes(), op, ": ", list.name, "[", i,
                  "] has shape ", t.sizes(), " but ", ref.name, "[", i, "] has shape ",
                  ref.tensors[i].sizes());
    }
  }
}

inline void check_dense_outputs(const char* op, const char* name, at::TensorList outs) {
  for (size_t i = 0; i < outs.size(); ++i) {
    TORCH_CHECK(outs[i].is_non_overlapping_and_dense(), op, ": ", name, "[", i,
                "] is written in place and must be non-overlapping and dense (e.g. contiguous)");
  }
}

// A 0-dim floating-point tensor on the tensors' device, or on the CPU (read there by value).
inline void check_scalar_tensor(const char* op, const char* name, const at::Tensor& s,
                                const at::Tensor& like) {
  TORCH_CHECK(s.dim() == 0, op, ": ", name, " must be a 0-dim tensor, got shape ", s.sizes());
  TORCH_CHECK(at::isFloatingType(s.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", s.scalar_type());
  TORCH_CHECK(s.device() == like.device() || s.device().is_cpu(), op, ": ", name, " is on ",
              s.device(), " but the tensors are on ", like.device(), " (a CPU scalar also works)");
}

inline void check_device_type(const char* op, at::TensorList ts, c10::DeviceType device_type) {
  TORCH_CHECK(ts.empty() || ts[0].device().type() == device_type, op, ": expected ",
              c10::DeviceTypeName(device_type), " tensors");
}

// Checks of multi_tensor_virtual_step; returns whether momentum buffers were given.
inline bool check_virtual_step_args(at::TensorList out, at::TensorList weights,
                                    at::TensorList grads, at::TensorList bufs,
                                    const at::Tensor& eta, c10::DeviceType device_type) {
  const char* op = "multi_tensor_virtual_step";
  const bool has_buf = !bufs.empty();
  if (has_buf) {
    check_tensor_lists(op, {{"out", out}, {"weights", weights}, {"grads", grads},
                            {"momentum_buffers", bufs}});
  } else {
    check_tensor_lists(op, {{"out", out}, {"weights", weights}, {"grads", grads}});
  }
  if (!out.empty()) {
    check_device_type(op, out, device_type);
    check_scalar_tensor(op, "eta", eta, out[0]);
  }
  check_dense_outputs(op, "out", out);
  return has_buf;
}

inline void check_axpy_args(at::TensorList ys, at::TensorList xs, const at::Tensor& alpha,
                            c10::DeviceType device_type) {
  const char* op = "multi_tensor_axpy_";
  check_tensor_lists(op, {{"ys", ys}, {"xs", xs}});
  if (ys.empty()) return;
  check_device_type(op, ys, device_type);
  check_dense_outputs(op, "ys", ys);
  check_scalar_tensor(op, "alpha", alpha, ys[0]);
}

// Checks of multi_tensor_finite_difference; returns its (uninitialised) outputs.
inline std::vector<at::Tensor> prepare_finite_difference(at::TensorList dalpha,
                                                         at::TensorList pos, at::TensorList neg,
                                                         const at::Tensor& r,
                                                         const at::Tensor& eta,
                                                         c10::DeviceType device_type) {
  const char* op = "multi_tensor_finite_difference";
  check_tensor_lists(op, {{"dalpha", dalpha}, {"grads_pos", pos}, {"grads_neg", neg}});
  std::vector<at::Tensor> outs;
  for (const auto& d : dalpha) outs.push_back(at::empty_like(d));
  if (!dalpha.empty()) {
    check_device_type(op, dalpha, device_type);
    check_scalar_tensor(op, "r", r, dalpha[0]);
    check_scalar_tensor(op, "eta", eta, dalpha[0]);
  }
  return outs;
}

// Checks of multi_tensor_revert_: tensor i of `saved` has the dtype, shape and device of
// tensors[i] (any dtype, mixed across i); `keep` is a 0-dim bool tensor.
inline void check_revert_args(at::TensorList tensors, at::TensorList saved, const at::Tensor& keep,
                              c10::DeviceType device_type) {
  const char* op = "multi_tensor_revert_";
  TORCH_CHECK(saved.size() == tensors.size(), op, ": saved has ", saved.size(),
              " tensors but tensors has ", tensors.size());
  TORCH_CHECK(keep.dim() == 0 && keep.scalar_type() == at::kBool, op,
              ": keep must be a 0-dim bool tensor, got ", keep.scalar_type(), " of shape ",
              keep.sizes());
  if (tensors.empty()) return;
  check_device_type(op, tensors, device_type);
  TORCH_CHECK(keep.device() == tensors[0].device() || keep.device().is_cpu(), op,
              ": keep is on ", keep.device(), " but the tensors are on ", tensors[0].device());
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(saved[i].scalar_type() == tensors[i].scalar_type() &&
                    saved[i].sizes() == tensors[i].sizes() &&
                    saved[i].device() == tensors[i].device() &&
                    tensors[i].device() == tensors[0].device(),
                op, ": saved[", i, "] (", saved[i].scalar_type(), " ", saved[i].sizes(), " on ",
                saved[i].device(), ") must match tensors[", i, "] (", tensors[i].scalar_type(),
                " ", tensors[i].sizes(), " on ", tensors[i].device(),
                "), and all tensors must be on one device");
  }
  check_dense_outputs(op, "tensors", tensors);
}

// Inputs laid out like the reference list, element for element (see in_layout_of).
inline std::vector<at::Tensor> in_layouts_of(at::TensorList xs, at::TensorList like) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) out.push_back(in_layout_of(xs[i], like[i]));
  return out;
}

}  // namespace darts_fast
