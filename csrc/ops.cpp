// Schemas of every darts_fast operator, defined once. Kernels register per backend in
// csrc/cpu and csrc/cuda; fake kernels and autograd are registered in darts_fast/kernels/.
#include <Python.h>
#include <torch/library.h>

// darts_fast._C is imported for its side effect (static operator registration below); it
// needs no Python-visible functions.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(darts_fast, m) {
  // out = sum_k weights[k] * xs[k]
  m.def("weighted_sum(Tensor[] xs, Tensor weights) -> Tensor");
  // Returns (grads of the xs whose flag is set, in order; grad of weights, or an empty tensor
  // when weights_need_grad is false).
  m.def(
      "weighted_sum_backward(Tensor grad, Tensor[] xs, Tensor weights, bool[] xs_need_grad, "
      "bool weights_need_grad) -> (Tensor[], Tensor)");

  // The weighted sum with each candidate's final affine-free BatchNorm folded in:
  // sum = sum_k weights[k] * (ys[k] - mean[k, c]) * invstd[k, c] over 4-D ys. Rows k with
  // batch_stats[k] take the per-channel batch statistics of ys[k] (computed here; their rows of
  // mean and invstd are ignored), the others the given ones (eval mode, identity: 0 and 1).
  // out = sum, or with rest (PC-DARTS, groups >= 2): sum (C channels) concatenated with rest
  // ((groups - 1) * C channels) and channel-shuffled in groups of `groups`, written in place.
  // Returns (out, the mean and invstd used, the biased batch variance of the batch rows (zero
  // elsewhere)); mean, invstd and var are [K, C] in float (double for double ys).
  m.def(
      "batch_norm_weighted_sum(Tensor[] ys, Tensor weights, Tensor mean, Tensor invstd, "
      "bool[] batch_stats, float eps, Tensor? rest=None, int groups=1) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // Returns (grads of the ys whose flag is set, in order, including the BatchNorm backward of
  // the batch rows; grad of weights, or an empty tensor when weights_need_grad is false; grad
  // of rest, or an empty tensor when rest_need_grad is false). mean and invstd are those the
  // forward returned; grad has the output's shape.
  m.def(
      "batch_norm_weighted_sum_backward(Tensor grad, Tensor[] ys, Tensor weights, Tensor mean, "
      "Tensor invstd, bool[] batch_stats, bool[] ys_need_grad, bool weights_need_grad, "
      "int groups=1, bool rest_need_grad=False) -> (Tensor[], Tensor, Tensor)");

  // One node of DARTS' recurrent search cell: states [J, B, H] (the predecessor states s_j),
  // ch [J, B, 2H] (their pre-activations, c_j then h_j), probs [J, 4] (the probabilities of
  // tanh, relu, sigmoid, identity per predecessor); out [B, H] =
  // sum_j sum_k probs[j, k] * (s_j + sigmoid(c_j) * (f_k(h_j) - s_j)).
  m.def("rnn_node(Tensor states, Tensor ch, Tensor probs) -> Tensor");
  // Returns (grad of states, grad of ch, grad of probs), each an empty tensor where its flag in
  // needs_grad is false; the activations are computed again from the inputs.
  m.def(
      "rnn_node_backward(Tensor grad, Tensor states, Tensor ch, Tensor probs, bool[3] needs_grad)"
      " -> (Tensor, Tensor, Tensor)");

  // sqrt(sum_i sum(tensors[i]^2)) as a 0-dim tensor, computed on the tensors' device.
  m.def("multi_tensor_norm(Tensor[] tensors) -> Tensor");
  // ys[i] += alpha * xs[i], alpha a 0-dim tensor.
  m.def("multi_tensor_axpy_(Tensor(a!)[] ys, Tensor[] xs, Tensor alpha) -> ()");
  // out[i] = weights[i] - eta * (momentum * momentum_buffers[i] + grads[i] + weight_decay *
  // weights[i]); an empty momentum_buffers list stands for zeros. eta is a 0-dim tensor (on the
  // device or the CPU), so a captured step replays with the learning rate of the moment.
  m.def(
      "multi_tensor_virtual_step(Tensor(a!)[] out, Tensor[] weights, Tensor[] grads, "
      "Tensor[] momentum_buffers, Tensor eta, float momentum, float weight_decay) -> ()");
  // dalpha[i] - eta * (grads_pos[i] - grads_neg[i]) / (2 r), r and eta 0-dim tensors.
  m.def(
      "multi_tensor_finite_difference(Tensor[] dalpha, Tensor[] grads_pos, Tensor[] grads_neg, "
      "Tensor r, Tensor eta) -> Tensor[]");
  // tensors[i] = saved[i] for every i when `keep` (a 0-dim bool tensor) is false; nothing when
  // it is true. Any dtype. Undoes a step on the device, without reading `keep` on the host.
  m.def("multi_tensor_revert_(Tensor(a!)[] tensors, Tensor[] saved, Tensor keep) -> ()");
}
