// CPU kernels of the multi-tensor ops: norm, axpy_, virtual_step, finite_difference, revert_.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "multi_tensor_host.h"
#include "multi_tensor_math.h"

namespace darts_fast {
namespace {

// All tensors of a list are cut into chunks of a fixed size; the chunks of every tensor are
// processed in parallel together, so a list of many small tensors still keeps all threads busy.
constexpr int64_t kChunk = 65536;
constexpr int64_t kLanes = 16;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> chunks_of(at::TensorList tensors) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) {
      chunks.push_back({static_cast<int64_t>(t), b, std::min(n, b + kChunk)});
    }
  }
  return chunks;
}

template <typename Fn>
void for_each_chunk(const std::vector<Chunk>& chunks, const Fn& fn) {
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) fn(c, chunks[c]);
  });
}

template <typename scalar_t>
std::vector<scalar_t*> mutable_ptrs(const std::vector<at::Tensor>& ts) {
  std::vector<scalar_t*> p;
  for (const auto& t : ts) p.push_back(t.mutable_data_ptr<scalar_t>());
  return p;
}

template <typename scalar_t>
std::vector<const scalar_t*> const_ptrs(const std::vector<at::Tensor>& ts) {
  std::vector<const scalar_t*> p;
  for (const auto& t : ts) p.push_back(t.const_data_ptr<scalar_t>());
  return p;
}

at::Tensor multi_tensor_norm_cpu(at::TensorList tensors_in) {
  TORCH_CHECK(!tensors_in.empty(), "multi_tensor_norm: tensors must be a non-empty list");
  check_tensor_lists("multi_tensor_norm", {{"tensors", tensors_in}});
  check_device_type("multi_tensor_norm", tensors_in, c10::DeviceType::CPU);
  std::vector<at::Tensor> tensors;
  for (const auto& t : tensors_in) {
    tensors.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  }
  const auto chunks = chunks_of(tensors);
  std::vector<double> partials(chunks.size(), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors[0].scalar_type(),
                                  "multi_tensor_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src = const_ptrs<scalar_t>(tensors);
    for_each_chunk(chunks, [&](int64_t c, const Chunk& ch) {
      // Independent lanes: the loop vectorizes, and each lane sums few terms (accuracy).
      acc_t lanes[kLanes] = {};
      const scalar_t* x = src[ch.tensor];
      const int64_t full = ch.end - (ch.end - ch.begin) % kLanes;
      for (int64_t i = ch.begin; i < full; i += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
          lanes[l] = sum_of_squares_term(lanes[l], static_cast<acc_t>(x[i + l]));
        }
      }
      for (int64_t i = full; i < ch.end; ++i) {
        lanes[i - full] = sum_of_squares_term(lanes[i - full], static_cast<acc_t>(x[i]));
      }
      double total = 0.0;
      for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
      partials[c] = total;
    });
  });
  // Partials are summed in chunk order: the same bits on every run and any thread count.
  double total = 0.0;
  for (double p : partials) total += p;
  return at::full({}, std::sqrt(total), tensors[0].options());
}

void multi_tensor_axpy_cpu(at::TensorList ys, at::TensorList xs_in, const at::Tensor& alpha) {
  check_axpy_args(ys, xs_in, alpha, c10::DeviceType::CPU);
  if (ys.empty()) return;
  const auto xs = in_layouts_of(xs_in, ys);
  const std::vector<at::Tensor> outs(ys.begin(), ys.end());
  const auto chunks = chunks_of(ys);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ys[0].scalar_type(),
                                  "multi_tensor_axpy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t a = alpha.item<acc_t>();
    const auto y = mutable_ptrs<scalar_t>(outs);
    const auto x = const_ptrs<scalar_t>(xs);
    for_each_chunk(chunks, [&](int64_t, const Chunk& ch) {
      scalar_t* yt = y[ch.tensor];
      const scalar_t* xt = x[ch.tensor];
      for (int64_t i = ch.begin; i < ch.end; ++i) {
        yt[i] = static_cast<scalar_t>(
            axpy(static_cast<acc_t>(yt[i]), a, static_cast<acc_t>(xt[i])));
      }
    });
  });
}

void multi_tensor_virtual_step_cpu(at::TensorList out, at::TensorList weights_in,
                                   at::TensorList grads_in, at::TensorList bufs_in,
                                   const at::Tensor& eta, double momentum, double weight_decay) {
  const bool has_buf =
      check_virtual_step_args(out, weights_in, grads_in, bufs_in, eta, c10::DeviceType::CPU);
  if (out.empty()) return;
  const auto w = in_layouts_of(weights_in, out);
  const auto g = in_layouts_of(grads_in, out);
  const auto b = has_buf ? in_layouts_of(bufs_in, out) : std::vector<at::Tensor>{};
  const std::vector<at::Tensor> outs(out.begin(), out.end());
  const auto chunks = chunks_of(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out[0].scalar_type(),
                                  "multi_tensor_virtual_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto o = mutable_ptrs<scalar_t>(outs);
    const auto wp = const_ptrs<scalar_t>(w);
    const auto gp = const_ptrs<scalar_t>(g);
    const auto bp = const_ptrs<scalar_t>(b);
    const acc_t e = eta.item<acc_t>(), mu = static_cast<acc_t>(momentum),
                wd = static_cast<acc_t>(weight_decay);
    for_each_chunk(chunks, [&](int64_t, const Chunk& ch) {
      const int64_t t = ch.tensor;
      for (int64_t i = ch.begin; i < ch.end; ++i) {
        const acc_t buf = has_buf ? static_cast<acc_t>(bp[t][i]) : acc_t(0);
        o[t][i] = static_cast<scalar_t>(virtual_sgd_step(
            static_cast<acc_t>(wp[t][i]), static_cast<acc_t>(gp[t][i]), buf, e, mu, wd));
      }
    });
  });
}

std::vector<at::Tensor> multi_tensor_finite_difference_cpu(at::TensorList dalpha,
                                                           at::TensorList pos_in,
                                                           at::TensorList neg_in,
                                                           const at::Tensor& r,
                                                           const at::Tensor& eta) {
  std::vector<at::Tensor> outs =
      prepare_finite_difference(dalpha, pos_in, neg_in, r, eta, c10::DeviceType::CPU);
  if (dalpha.empty()) return outs;
  const auto d = in_layouts_of(dalpha, outs);
  const auto p = in_layouts_of(pos_in, outs);
  const auto n = in_layouts_of(neg_in, outs);
  const auto chunks = chunks_of(outs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outs[0].scalar_type(),
                                  "multi_tensor_finite_difference_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t rr = r.item<acc_t>(), e = eta.item<acc_t>();
    const auto o = mutable_ptrs<scalar_t>(outs);
    const auto dp = const_ptrs<scalar_t>(d);
    const auto pp = const_ptrs<scalar_t>(p);
    const auto np = const_ptrs<scalar_t>(n);
    for_each_chunk(chunks, [&](int64_t, const Chunk& ch) {
      const int64_t t = ch.tensor;
      for (int64_t i = ch.begin; i < ch.end; ++i) {
        o[t][i] = static_cast<scalar_t>(finite_difference_hypergrad(
            static_cast<acc_t>(dp[t][i]), static_cast<acc_t>(pp[t][i]),
            static_cast<acc_t>(np[t][i]), e, rr));
      }
    });
  });
  return outs;
}

void multi_tensor_revert_cpu(at::TensorList tensors, at::TensorList saved,
                             const at::Tensor& keep) {
  check_revert_args(tensors, saved, keep, c10::DeviceType::CPU);
  if (tensors.empty() || keep.item<bool>()) return;
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].copy_(saved[i]);
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CPU, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm_cpu);
  m.impl("multi_tensor_axpy_", &multi_tensor_axpy_cpu);
  m.impl("multi_tensor_virtual_step", &multi_tensor_virtual_step_cpu);
  m.impl("multi_tensor_finite_difference", &multi_tensor_finite_difference_cpu);
  m.impl("multi_tensor_revert_", &multi_tensor_revert_cpu);
}

}  // namespace darts_fast
