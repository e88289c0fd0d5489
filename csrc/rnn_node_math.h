#pragma once

#include <cmath>

#include "host_device.h"

// Per-element math of one node of DARTS' recurrent search cell, shared by the CPU and CUDA
// kernels. For a predecessor state s, its pre-activations c and h, and the probabilities p_k of
// the K = 4 activations f_k = (tanh, relu, sigmoid, identity):
//   u_k     = s + sigmoid(c) * (f_k(h) - s)        (the highway of the original cell)
//   forward:  out   += sum_k p_k * u_k             (summed over k here; over the J predecessors
//                                                   by the caller, in order)
//   backward: d s    = g * (1 - sigmoid(c)) * sum_k p_k
//             d c    = g * sigmoid(c) * (1 - sigmoid(c)) * sum_k p_k * (f_k(h) - s)
//             d h    = g * sigmoid(c) * sum_k p_k * f_k'(h)
//             d p_k += g * u_k                     (the per-element term of a sum over B * H)
// Each formula takes the transcendental values sigmoid(c), tanh(h) and sigmoid(h) as inputs (the
// "_of" functions): the CUDA kernels compute them here, per element; the CPU kernels compute them
// with torch's vectorised sigmoid and tanh over the whole node first, which a scalar loop of
// expf and tanhf would otherwise dominate.
namespace darts_fast {

constexpr int kRnnNodeActivations = 4;

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t rnn_node_exp(acc_t x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t rnn_node_tanh(acc_t x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  return std::tanh(x);
#endif
}

// 1 / (1 + exp(-x)), the formula torch's CPU sigmoid uses; exp(-x) = inf gives 0, not nan.
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t rnn_node_sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + rnn_node_exp(-x));
}

// f_k(h) for the four activations, and their derivatives. relu'(0) = 0, as torch's relu backward.
template <typename acc_t>
struct RnnNodeActivations {
  acc_t f[kRnnNodeActivations];
  acc_t df[kRnnNodeActivations];
};

template <typename acc_t>
DARTS_HOST_DEVICE inline RnnNodeActivations<acc_t> rnn_node_activations(acc_t h, acc_t t,
                                                                        acc_t sg) {
  const bool positive = h > acc_t(0);
  RnnNodeActivations<acc_t> a;
  a.f[0] = t;
  a.f[1] = positive ? h : acc_t(0);
  a.f[2] = sg;
  a.f[3] = h;
  a.df[0] = acc_t(1) - t * t;
  a.df[1] = positive ? acc_t(1) : acc_t(0);
  a.df[2] = sg * (acc_t(1) - sg);
  a.df[3] = acc_t(1);
  return a;
}

// acc + sum_k p[k] * u_k for one predecessor, from sc = sigmoid(c), t = tanh(h), sg = sigmoid(h).
template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t rnn_node_term_of(acc_t acc, const acc_t* p, acc_t s, acc_t sc,
                                                acc_t h, acc_t t, acc_t sg) {
  const RnnNodeActivations<acc_t> a = rnn_node_activations(h, t, sg);
  acc_t sum = acc_t(0);
  for (int k = 0; k < kRnnNodeActivations; ++k) sum += p[k] * (s + sc * (a.f[k] - s));
  return acc + sum;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline acc_t rnn_node_term(acc_t acc, const acc_t* p, acc_t s, acc_t c,
                                             acc_t h) {
  return rnn_node_term_of(acc, p, s, rnn_node_sigmoid(c), h, rnn_node_tanh(h),
                          rnn_node_sigmoid(h));
}

template <typename acc_t>
struct RnnNodeGrads {
  acc_t ds, dc, dh;
};

// The input gradients of one predecessor at one element, and dp[k] += g * u_k (always: four
// multiply-adds cost less than a branch, and keep dp in registers on the GPU).
template <typename acc_t>
DARTS_HOST_DEVICE inline RnnNodeGrads<acc_t> rnn_node_grads_of(acc_t g, const acc_t* p, acc_t s,
                                                               acc_t sc, acc_t h, acc_t t,
                                                               acc_t sg, acc_t* dp) {
  const RnnNodeActivations<acc_t> a = rnn_node_activations(h, t, sg);
  acc_t p_sum = acc_t(0), gate = acc_t(0), slope = acc_t(0);
  for (int k = 0; k < kRnnNodeActivations; ++k) {
    const acc_t diff = a.f[k] - s;
    p_sum += p[k];
    gate += p[k] * diff;
    slope += p[k] * a.df[k];
    dp[k] += g * (s + sc * diff);
  }
  const acc_t g_sc = g * sc, one_minus_sc = acc_t(1) - sc;
  RnnNodeGrads<acc_t> grads;
  grads.ds = g * one_minus_sc * p_sum;
  grads.dc = g_sc * one_minus_sc * gate;
  grads.dh = g_sc * slope;
  return grads;
}

template <typename acc_t>
DARTS_HOST_DEVICE inline RnnNodeGrads<acc_t> rnn_node_grads(acc_t g, const acc_t* p, acc_t s,
                                                            acc_t c, acc_t h, acc_t* dp) {
  return rnn_node_grads_of(g, p, s, rnn_node_sigmoid(c), h, rnn_node_tanh(h),
                           rnn_node_sigmoid(h), dp);
}

}  // namespace darts_fast
