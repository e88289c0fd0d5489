#pragma once

#include "host_device.h"

// Per-element math of the mixed-op weighted sum, shared by the CPU and CUDA kernels.
//   forward:  out      = sum_k w_k * x_k        (accumulated in k order, in acc_t)
//   backward: grad_x_k = w_k * g
//             grad_w_k = sum_i g_i * x_k,i      (this file holds the per-element term)
namespace darts_fast {

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t weighted_sum_term(acc_t acc, acc_t w_k, acc_t x_k) {
  return acc + w_k * x_k;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t weighted_sum_input_grad(acc_t w_k, acc_t g) {
  return w_k * g;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t weighted_sum_weight_grad_term(acc_t acc, acc_t g, acc_t x_k) {
  return acc + g * x_k;
}

}  // namespace darts_fast
