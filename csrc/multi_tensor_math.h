#pragma once

#include "host_device.h"

// Per-element math of the second-order architect's multi-tensor ops, shared by CPU and CUDA.
// The grouping of each expression follows the original DARTS architect, so that float results
// agree with it to rounding.
namespace darts_fast {

// Virtual SGD step:  w' = w - eta * (mu * buf + (g + wd * w))
// (the original forms moment = mu*buf and dtheta = g + wd*w, then theta - eta*(moment + dtheta)).
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t virtual_sgd_step(acc_t w, acc_t g, acc_t buf, acc_t eta, acc_t mu,
                                                acc_t wd) {
  const acc_t moment = mu * buf;
  const acc_t dtheta = g + wd * w;
  return w - eta * (moment + dtheta);
}

// Perturbation of the weights along v:  y + a * x.
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t axpy(acc_t y, acc_t a, acc_t x) {
  return y + a * x;
}

// One term of a sum of squares, for the global L2 norm.
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t sum_of_squares_term(acc_t acc, acc_t x) {
  return acc + x * x;
}

// Finite-difference hypergradient:  dalpha - eta * (g+ - g-) / (2R)
// (the original divides (g+ - g-) by 2R first, then subtracts eta times that).
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t finite_difference_hypergrad(acc_t dalpha, acc_t grad_pos,
                                                           acc_t grad_neg, acc_t eta, acc_t r) {
  return dalpha - eta * ((grad_pos - grad_neg) / (r + r));
}

}  // namespace darts_fast
