#pragma once

// Dtype and memory-layout helpers shared by every host function.
#include <ATen/ATen.h>

#include <vector>

namespace darts_fast {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype kernels accumulate in: float for float/half/bfloat16, double for double.
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Returns x laid out exactly like `like` (same sizes and strides, non-overlapping and dense), so
// that kernels can walk all tensors with one flat index. Copies only when the layouts differ.
inline at::Tensor in_layout_of(const at::Tensor& x, const at::Tensor& like) {
  if (x.strides() == like.strides() && x.is_non_overlapping_and_dense()) {
    return x;
  }
  return at::empty_like(like).copy_(x);
}

inline std::vector<at::Tensor> in_layout_of(at::TensorList xs, const at::Tensor& like) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) {
    out.push_back(in_layout_of(x, like));
  }
  return out;
}

}  // namespace darts_fast
