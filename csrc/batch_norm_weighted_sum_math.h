#pragma once

#include <cmath>

#include "host_device.h"

// Per-element math of the mixed-op weighted sum with each candidate's final affine-free
// BatchNorm folded in, shared by the CPU and CUDA kernels. Per candidate k and channel c, with
// the statistics mean_kc and invstd_kc = 1 / sqrt(var_kc + eps):
//   yhat_k = (y_k - mean_kc) * invstd_kc
//   forward:  out = sum_k w_k * yhat_k                                  (in k order, in acc_t)
//   backward, with the per-channel sums S_g = sum g and S_k = sum g * yhat_k over the count
//   elements (n, h, w) of a channel:
//     grad_w_k = sum_c S_k
//     grad_y_k = w_k * invstd_kc * (g - S_g / count - yhat_k * S_k / count)   (batch statistics)
//     grad_y_k = w_k * invstd_kc * g                      (fixed statistics: eval mode, identity)
namespace darts_fast {

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t normalized(acc_t y, acc_t mean, acc_t invstd) {
  return (y - mean) * invstd;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t batch_norm_weighted_sum_term(acc_t acc, acc_t w_k, acc_t y,
                                                            acc_t mean, acc_t invstd) {
  return acc + w_k * normalized(y, mean, invstd);
}

// grad_y_k for batch statistics: `mean_g` = S_g / count and `mean_g_yhat` = S_k / count.
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t batch_norm_weighted_sum_input_grad(acc_t w_k, acc_t invstd,
                                                                  acc_t g, acc_t yhat,
                                                                  acc_t mean_g,
                                                                  acc_t mean_g_yhat) {
  return w_k * invstd * (g - mean_g - yhat * mean_g_yhat);
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t batch_norm_weighted_sum_fixed_input_grad(acc_t w_k, acc_t invstd,
                                                                        acc_t g) {
  return w_k * invstd * g;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t inverse_std(acc_t var, double eps) {
#if defined(__CUDA_ARCH__)
  return acc_t(1) / sqrt(var + static_cast<acc_t>(eps));
#else
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
#endif
}

}  // namespace darts_fast
