// CPU kernels of darts_fast::batch_norm_weighted_sum and its backward. Rows (o) of C * inner
// elements are processed in blocks of a fixed size, independent of the thread count; per-channel
// sums are taken per block and then over blocks in order, in double: the same bits on every run
// and with any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "batch_norm_weighted_sum_host.h"
#include "batch_norm_weighted_sum_math.h"

namespace darts_fast {
namespace {

constexpr int64_t kBlock = 16384;  // elements per block, about

// The rows split into `count` blocks of `rows` rows (the last one shorter).
struct RowBlocks {
  int64_t rows, count;
  explicit RowBlocks(const ChannelGeometry& geo)
      : rows(std::max<int64_t>(1, kBlock / std::max<int64_t>(1, geo.C * geo.inner))),
        count((geo.outer + rows - 1) / rows) {}
};

// What for_each_element and add_channel_sums pass for an element: its position p. With inner > 1
// that is its channel. With inner == 1 (channels_last) the channel is the fastest index, and
// PC-DARTS' candidates have as few as 4 channels: a loop over one row's channels would be too
// short to vectorize or to hide an addition's latency. Such rows are walked in tiles of whole
// rows (kTile elements or more), and p is the position in the tile, whose channel is channel[p].
// Per-channel coefficients are laid out per position (of) so that the loops read them in order.
constexpr int64_t kTile = 64;

struct Positions {
  int64_t C;
  std::vector<int64_t> channel;  // of each position
  Positions(int64_t C, int64_t inner)
      : C(C), channel(inner == 1 ? C * std::max<int64_t>(1, kTile / C) : C) {
    for (size_t p = 0; p < channel.size(); ++p) channel[p] = static_cast<int64_t>(p) % C;
  }
  int64_t size() const { return static_cast<int64_t>(channel.size()); }
  template <typename T>
  std::vector<T> of(const T* per_channel) const {
    std::vector<T> out(channel.size());
    for (size_t p = 0; p < channel.size(); ++p) out[p] = per_channel[channel[p]];
    return out;
  }
  // of() for each of the `rows` rows of C coefficients at `per_row_channel`.
  template <typename T>
  std::vector<std::vector<T>> of_rows(const T* per_row_channel, int64_t rows) const {
    std::vector<std::vector<T>> out(rows);
    for (int64_t r = 0; r < rows; ++r) out[r] = of(per_row_channel + r * C);
    return out;
  }
};

// f(p, j) for every element j of `rows` consecutive rows (j counted from the first), p its
// position: tile by tile with inner == 1, else a loop over each channel's run of inner elements.
template <typename F>
inline void for_each_element(int64_t rows, const Positions& pos, int64_t inner, const F& f) {
  const int64_t C = pos.C;
  if (inner == 1) {
    const int64_t n = rows * C, T = pos.size();
    for (int64_t base = 0; base < n; base += T) {
      const int64_t m = std::min(T, n - base);
      for (int64_t t = 0; t < m; ++t) f(t, base + t);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t j = (r * C + c) * inner; j < (r * C + c + 1) * inner; ++j) f(c, j);
    }
  }
}

// acc[c] += the sum of term(p, j) over the elements j of channel c in `rows` consecutive rows,
// summed in independent lanes (one per position with inner == 1, eight per run of a channel
// otherwise), so that the loop vectorizes instead of serialising on one sum's addition latency;
// every order is fixed.
template <typename Term>
inline void add_channel_sums(int64_t rows, const Positions& pos, int64_t inner, double* acc,
                             const Term& term) {
  if (inner == 1) {
    std::vector<double> lanes(pos.size(), 0.0);
    for_each_element(rows, pos, 1, [&](int64_t p, int64_t j) { lanes[p] += term(p, j); });
    for (int64_t p = 0; p < pos.size(); ++p) acc[pos.channel[p]] += lanes[p];
    return;
  }
  constexpr int64_t kLanes = 8;
  const int64_t C = pos.C, full = inner - inner % kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t start = (r * C + c) * inner;
      double lanes[kLanes] = {};
      for (int64_t i = 0; i < full; i += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(c, start + i + l);
      }
      double sum = 0.0;
      for (int64_t i = full; i < inner; ++i) sum += term(c, start + i);
      for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
      acc[c] += sum;
    }
  }
}

// f(block, first_row, rows) for every block of rows, blocks in parallel.
template <typename F>
void parallel_over_blocks(const ChannelGeometry& geo, const F& f) {
  const RowBlocks blocks(geo);
  at::parallel_for(0, blocks.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * blocks.rows;
      f(b, first, std::min(blocks.rows, geo.outer - first));
    }
  });
}

// Per-channel sums of `terms` quantities: add_rows(first_row, rows, acc) adds those rows' share
// to acc[term * C + c]. Returns the [terms * C] totals.
template <typename AddRows>
std::vector<double> channel_sums(const ChannelGeometry& geo, int64_t terms,
                                 const AddRows& add_rows) {
  const int64_t width = terms * geo.C, count = RowBlocks(geo).count;
  std::vector<double> partials(count * width, 0.0);
  parallel_over_blocks(geo, [&](int64_t b, int64_t first, int64_t rows) {
    add_rows(first, rows, partials.data() + b * width);
  });
  std::vector<double> total(width, 0.0);
  for (int64_t b = 0; b < count; ++b) {
    for (int64_t j = 0; j < width; ++j) total[j] += partials[b * width + j];
  }
  return total;
}

// Where the runs of `inner` elements of one row o of the weighted sum and of the rest lie in the
// shuffled output and in rest: row o's offsets are row 0's plus o times the row stride.
struct ShuffledRows {
  int64_t out_row, rest_row;
  std::vector<int64_t> sum_out;            // per channel c of the sum
  std::vector<int64_t> rest_out, rest_in;  // per channel (g - 1) * C + c of the rest, g >= 1
  ShuffledRows(const ChannelGeometry& geo, const Shuffle& shuffle)
      : out_row(shuffle.output_index(geo, 1, 0, 0, 0)), rest_row(shuffle.rest_outer) {
    for (int64_t c = 0; c < geo.C; ++c) sum_out.push_back(shuffle.output_index(geo, 0, c, 0, 0));
    for (int64_t c = 0; c < geo.C; ++c) {  // in the output's order
      for (int64_t g = 1; g < shuffle.groups; ++g) {
        rest_out.push_back(shuffle.output_index(geo, 0, c, g, 0));
        rest_in.push_back(shuffle.rest_index(geo, 0, c, g, 0));
      }
    }
  }
};

// copy(offset in the output, offset in the other tensor) for each run of `inner` elements of
// `rows` rows from `first`: the sum's runs (the other tensor holding those rows as a dense
// block) or the rest's.
template <typename Copy>
inline void for_each_sum_run(const ShuffledRows& at, int64_t first, int64_t rows, int64_t inner,
                             const Copy& copy) {
  const int64_t C = static_cast<int64_t>(at.sum_out.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      copy((first + r) * at.out_row + at.sum_out[c], (r * C + c) * inner);
    }
  }
}

template <typename Copy>
inline void for_each_rest_run(const ShuffledRows& at, int64_t first, int64_t rows,
                              const Copy& copy) {
  for (int64_t o = first; o < first + rows; ++o) {
    for (size_t q = 0; q < at.rest_out.size(); ++q) {
      copy(o * at.out_row + at.rest_out[q], o * at.rest_row + at.rest_in[q]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_weighted_sum_cpu(
    at::TensorList ys, const at::Tensor& weights, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::List<bool>& batch_stats, double eps,
    const std::optional<at::Tensor>& rest, int64_t groups) {
  BatchNormWeightedSumForward args = prepare_batch_norm_weighted_sum(
      ys, weights, mean, invstd, batch_stats, rest, groups, c10::DeviceType::CPU);
  const ChannelGeometry geo = args.geo;
  const Shuffle shuffle = args.shuffle;
  const int64_t K = static_cast<int64_t>(ys.size()), C = geo.C, inner = geo.inner;
  if (geo.numel() == 0) return {args.out, args.mean, args.invstd, args.var};
  std::vector<int64_t> batch;  // the rows of batch statistics
  for (int64_t k = 0; k < K; ++k) {
    if (batch_stats.get(k)) batch.push_back(k);
  }
  const int64_t B = static_cast<int64_t>(batch.size());
  const Positions pos(C, inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.out.scalar_type(),
                                  "batch_norm_weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> y(K);
    for (int64_t k = 0; k < K; ++k) y[k] = args.ys[k].const_data_ptr<scalar_t>();
    acc_t* mean_p = args.mean.mutable_data_ptr<acc_t>();
    acc_t* invstd_p = args.invstd.mutable_data_ptr<acc_t>();
    acc_t* var_p = args.var.mutable_data_ptr<acc_t>();
    if (B > 0) {  // two passes: the mean, then the squared deviations from it
      const double count = static_cast<double>(geo.count());
      const std::vector<double> sums = channel_sums(geo, B, [&](int64_t first, int64_t rows,
                                                                double* acc) {
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* base = y[batch[b]] + first * C * inner;
          add_channel_sums(rows, pos, inner, acc + b * C,
                           [&](int64_t, int64_t j) { return static_cast<double>(base[j]); });
        }
      });
      std::vector<double> mu(B * C);
      for (int64_t j = 0; j < B * C; ++j) mu[j] = sums[j] / count;
      const std::vector<std::vector<double>> mu_at = pos.of_rows(mu.data(), B);
      const std::vector<double> squares = channel_sums(geo, B, [&](int64_t first, int64_t rows,
                                                                   double* acc) {
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* base = y[batch[b]] + first * C * inner;
          const double* m = mu_at[b].data();
          add_channel_sums(rows, pos, inner, acc + b * C, [&](int64_t p, int64_t j) {
            const double d = static_cast<double>(base[j]) - m[p];
            return d * d;
          });
        }
      });
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t kc = batch[b] * C + c;
          mean_p[kc] = static_cast<acc_t>(mu[b * C + c]);
          var_p[kc] = static_cast<acc_t>(squares[b * C + c] / count);
          invstd_p[kc] = inverse_std(var_p[kc], eps);
        }
      }
    }
    const acc_t* w = args.weights.const_data_ptr<acc_t>();
    const std::vector<std::vector<acc_t>> mean_at = pos.of_rows(mean_p, K);
    const std::vector<std::vector<acc_t>> invstd_at = pos.of_rows(invstd_p, K);
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    const scalar_t* rest_p = args.rest.defined() ? args.rest.const_data_ptr<scalar_t>() : nullptr;
    const ShuffledRows at(geo, shuffle);
    parallel_over_blocks(geo, [&](int64_t, int64_t first, int64_t rows) {
      const int64_t offset = first * C * inner;
      std::vector<acc_t> acc(rows * C * inner, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* yk = y[k] + offset;
        const acc_t* m = mean_at[k].data();
        const acc_t* r = invstd_at[k].data();
        for_each_element(rows, pos, inner, [&](int64_t p, int64_t j) {
          acc[j] = batch_norm_weighted_sum_term(acc[j], w[k], static_cast<acc_t>(yk[j]), m[p],
                                                r[p]);
        });
      }
      if (shuffle.groups == 1) {
        for (size_t j = 0; j < acc.size(); ++j) out[offset + j] = static_cast<scalar_t>(acc[j]);
        return;
      }
      for_each_sum_run(at, first, rows, inner, [&](int64_t o, int64_t a) {
        for (int64_t i = 0; i < inner; ++i) out[o + i] = static_cast<scalar_t>(acc[a + i]);
      });
      for_each_rest_run(at, first, rows, [&](int64_t o, int64_t a) {
        for (int64_t i = 0; i < inner; ++i) out[o + i] = rest_p[a + i];
      });
    });
  });
  return {args.out, args.mean, args.invstd, args.var};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> batch_norm_weighted_sum_backward_cpu(
    const at::Tensor& grad, at::TensorList ys, const at::Tensor& weights, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::List<bool>& batch_stats,
    const c10::List<bool>& ys_need_grad, bool weights_need_grad, int64_t groups,
    bool rest_need_grad) {
  BatchNormWeightedSumBackward args = prepare_batch_norm_weighted_sum_backward(
      grad, ys, weights, mean, invstd, batch_stats, ys_need_grad, weights_need_grad, groups,
      rest_need_grad, c10::DeviceType::CPU);
  const ChannelGeometry geo = args.geo;
  const Shuffle shuffle = args.shuffle;
  const int64_t K = static_cast<int64_t>(ys.size()), C = geo.C, inner = geo.inner;
  if (geo.numel() == 0) return {args.grad_ys, args.grad_weights, args.grad_rest};
  if (rest_need_grad) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "batch_norm_weighted_sum_backward_cpu_rest", [&] {
      const scalar_t* g = args.grad.const_data_ptr<scalar_t>();
      scalar_t* out = args.grad_rest.mutable_data_ptr<scalar_t>();
      const ShuffledRows at(geo, shuffle);
      parallel_over_blocks(geo, [&](int64_t, int64_t first, int64_t rows) {
        for_each_rest_run(at, first, rows, [&](int64_t o, int64_t a) {
          for (int64_t i = 0; i < inner; ++i) out[a + i] = g[o + i];
        });
      });
    });
  }
  if (args.grad_ys.empty() && !weights_need_grad) {
    return {args.grad_ys, args.grad_weights, args.grad_rest};
  }
  // S_k = sum g * yhat_k where the weight gradient or a batch row's input gradient needs it.
  std::vector<char> need_sum(K);
  for (int64_t k = 0; k < K; ++k) {
    need_sum[k] = weights_need_grad || (batch_stats.get(k) && ys_need_grad.get(k));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.grad.scalar_type(),
                                  "batch_norm_weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = args.grad.const_data_ptr<scalar_t>();
    // The weighted sum's gradient in `rows` rows from `first`: grad itself without a shuffle,
    // else gathered from the sum's channels of the shuffled output into `buffer`.
    const ShuffledRows at(geo, shuffle);
    auto sum_grad_rows = [&](int64_t first, int64_t rows,
                             std::vector<scalar_t>& buffer) -> const scalar_t* {
      if (shuffle.groups == 1) return g + first * C * inner;
      buffer.resize(rows * C * inner);
      for_each_sum_run(at, first, rows, inner, [&](int64_t o, int64_t a) {
        for (int64_t i = 0; i < inner; ++i) buffer[a + i] = g[o + i];
      });
      return buffer.data();
    };
    const Positions pos(C, inner);
    std::vector<const scalar_t*> y(K);
    for (int64_t k = 0; k < K; ++k) y[k] = args.ys[k].const_data_ptr<scalar_t>();
    const acc_t* mean_p = args.mean.const_data_ptr<acc_t>();
    const acc_t* invstd_p = args.invstd.const_data_ptr<acc_t>();
    const acc_t* w = args.weights.const_data_ptr<acc_t>();
    const std::vector<std::vector<acc_t>> mean_at = pos.of_rows(mean_p, K);
    const std::vector<std::vector<acc_t>> invstd_at = pos.of_rows(invstd_p, K);
    // Terms 0..K-1: S_k; term K: S_g = sum g.
    const std::vector<double> sums = channel_sums(geo, K + 1, [&](int64_t first, int64_t rows,
                                                                  double* acc) {
      const int64_t offset = first * C * inner;
      std::vector<scalar_t> buffer;
      const scalar_t* g_rows = sum_grad_rows(first, rows, buffer);
      add_channel_sums(rows, pos, inner, acc + K * C,
                       [&](int64_t, int64_t j) { return static_cast<double>(g_rows[j]); });
      for (int64_t k = 0; k < K; ++k) {
        if (!need_sum[k]) continue;
        const acc_t* m = mean_at[k].data();
        const acc_t* r = invstd_at[k].data();
        const scalar_t* y_rows = y[k] + offset;
        add_channel_sums(rows, pos, inner, acc + k * C, [&](int64_t p, int64_t j) {
          return static_cast<double>(static_cast<acc_t>(g_rows[j]) *
                                     normalized(static_cast<acc_t>(y_rows[j]), m[p], r[p]));
        });
      }
    });
    if (weights_need_grad) {
      at::Tensor total = at::zeros({K}, args.mean.options().dtype(at::kDouble));
      double* total_p = total.mutable_data_ptr<double>();
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = 0; c < C; ++c) total_p[k] += sums[k * C + c];
      }
      args.grad_weights = total.to(weights.scalar_type());
    }
    if (args.grad_ys.empty()) return;
    std::vector<scalar_t*> gy(K, nullptr);
    for (int64_t k = 0, next = 0; k < K; ++k) {
      if (ys_need_grad.get(k)) gy[k] = args.grad_ys[next++].mutable_data_ptr<scalar_t>();
    }
    // Per channel: the two means of the batch rows' correction.
    const double count = static_cast<double>(geo.count());
    std::vector<acc_t> mean_g(C), mean_g_yhat(K * C);
    for (int64_t c = 0; c < C; ++c) mean_g[c] = static_cast<acc_t>(sums[K * C + c] / count);
    for (int64_t kc = 0; kc < K * C; ++kc) mean_g_yhat[kc] = static_cast<acc_t>(sums[kc] / count);
    const std::vector<acc_t> mean_g_at = pos.of(mean_g.data());
    const std::vector<std::vector<acc_t>> mean_g_yhat_at = pos.of_rows(mean_g_yhat.data(), K);
    parallel_over_blocks(geo, [&](int64_t, int64_t first, int64_t rows) {
      const int64_t offset = first * C * inner;
      std::vector<scalar_t> buffer;
      const scalar_t* g_rows = sum_grad_rows(first, rows, buffer);
      for (int64_t k = 0; k < K; ++k) {
        if (!gy[k]) continue;
        const acc_t* m = mean_at[k].data();
        const acc_t* r = invstd_at[k].data();
        const acc_t* mg = mean_g_at.data();
        const acc_t* mgy = mean_g_yhat_at[k].data();
        const scalar_t* y_rows = y[k] + offset;
        scalar_t* out = gy[k] + offset;
        if (batch_stats.get(k)) {
          for_each_element(rows, pos, inner, [&](int64_t p, int64_t j) {
            out[j] = static_cast<scalar_t>(batch_norm_weighted_sum_input_grad(
                w[k], r[p], static_cast<acc_t>(g_rows[j]),
                normalized(static_cast<acc_t>(y_rows[j]), m[p], r[p]), mg[p], mgy[p]));
          });
        } else {
          for_each_element(rows, pos, inner, [&](int64_t p, int64_t j) {
            out[j] = static_cast<scalar_t>(batch_norm_weighted_sum_fixed_input_grad(
                w[k], r[p], static_cast<acc_t>(g_rows[j])));
          });
        }
      }
    });
  });
  return {args.grad_ys, args.grad_weights, args.grad_rest};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CPU, m) {
  m.impl("batch_norm_weighted_sum", &batch_norm_weighted_sum_cpu);
  m.impl("batch_norm_weighted_sum_backward", &batch_norm_weighted_sum_backward_cpu);
}

}  // namespace darts_fast
