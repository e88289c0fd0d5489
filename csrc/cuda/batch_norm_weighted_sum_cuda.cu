// CUDA kernels of darts_fast::batch_norm_weighted_sum and its backward. Per-channel reductions
// run one block per (channel, candidate) in a fixed order (block_sum): the same bits on every
// run. Candidates are handled in groups of kGroup per launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "batch_norm_weighted_sum_host.h"
#include "batch_norm_weighted_sum_math.h"
#include "cuda/block_reduce.cuh"

namespace darts_fast {
namespace {

constexpr int kGroup = 8;
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 2048;

template <typename scalar_t>
struct Group {
  const scalar_t* y[kGroup];
  scalar_t* grad_y[kGroup];  // backward: null where that gradient is not wanted
  int k[kGroup];             // the candidate index of each member
  bool batch[kGroup];        // backward: its statistics are batch statistics
  int count;
};

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

__device__ inline int64_t channel_element(const ChannelGeometry& geo, int64_t c, int64_t e) {
  return (e / geo.inner * geo.C + c) * geo.inner + e % geo.inner;
}

// One block per (channel c = blockIdx.x, member blockIdx.y): mean, biased variance and invstd of
// that member's channel, two passes.
template <typename scalar_t, typename acc_t>
__global__ void stats_kernel(Group<scalar_t> group, ChannelGeometry geo, double eps,
                             acc_t* __restrict__ mean, acc_t* __restrict__ invstd,
                             acc_t* __restrict__ var) {
  __shared__ acc_t shared[32];
  __shared__ acc_t mean_shared;
  const int64_t c = blockIdx.x, count = geo.count();
  const scalar_t* y = group.y[blockIdx.y];
  acc_t sum = acc_t(0);
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    sum += static_cast<acc_t>(y[channel_element(geo, c, e)]);
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) mean_shared = sum / static_cast<acc_t>(count);
  __syncthreads();
  const acc_t m = mean_shared;
  acc_t squares = acc_t(0);
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const acc_t d = static_cast<acc_t>(y[channel_element(geo, c, e)]) - m;
    squares += d * d;
  }
  squares = block_sum(squares, shared);
  if (threadIdx.x == 0) {
    const int64_t kc = static_cast<int64_t>(group.k[blockIdx.y]) * geo.C + c;
    const acc_t v = squares / static_cast<acc_t>(count);
    mean[kc] = m;
    var[kc] = v;
    invstd[kc] = inverse_std(v, eps);
  }
}

// Output element f of the shuffled output: prior + sum over the group of w_k * yhat_k, in acc_t
// (prior: the earlier groups' sum in the weighted sum's geometry, null for the first; it may
// alias out without a shuffle), or its rest element. The earlier groups run unshuffled.
template <typename scalar_t, typename acc_t, typename out_t>
__global__ void forward_kernel(Group<scalar_t> group, ChannelGeometry geo, Shuffle shuffle,
                               const scalar_t* __restrict__ rest, const acc_t* __restrict__ w,
                               const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                               const acc_t* prior, out_t* out) {
  const int64_t n = shuffle.numel(geo);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; f < n;
       f += stride) {
    int64_t e = 0, r = 0;
    if (!shuffle.locate(geo, f, &e, &r)) {
      out[f] = static_cast<out_t>(rest[r]);
      continue;
    }
    const int64_t c = e / geo.inner % geo.C;
    acc_t acc = prior ? prior[e] : acc_t(0);
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count) {
        const int64_t kc = static_cast<int64_t>(group.k[j]) * geo.C + c;
        acc = batch_norm_weighted_sum_term(acc, w[group.k[j]],
                                           static_cast<acc_t>(group.y[j][e]), mean[kc],
                                           invstd[kc]);
      }
    }
    out[f] = static_cast<out_t>(acc);
  }
}

// One block per (channel c = blockIdx.x): sums[j * C + c] = S_k of member j (those with y set),
// and, when with_grad_sum, sums[K * C + c] = S_g; g is the (shuffled) output's gradient.
template <typename scalar_t, typename acc_t>
__global__ void sums_kernel(Group<scalar_t> group, ChannelGeometry geo, Shuffle shuffle,
                            const scalar_t* __restrict__ g, const acc_t* __restrict__ mean,
                            const acc_t* __restrict__ invstd, bool with_grad_sum, int64_t K,
                            acc_t* __restrict__ sums) {
  __shared__ acc_t shared[32];
  const int64_t c = blockIdx.x, count = geo.count();
  if (with_grad_sum) {
    acc_t s = acc_t(0);
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      s += static_cast<acc_t>(g[shuffle.sum_to_output(geo, channel_element(geo, c, e))]);
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) sums[K * geo.C + c] = s;
  }
  for (int j = 0; j < group.count; ++j) {
    if (!group.y[j]) continue;
    const int64_t kc = static_cast<int64_t>(group.k[j]) * geo.C + c;
    const acc_t m = mean[kc], r = invstd[kc];
    acc_t s = acc_t(0);
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      const int64_t i = channel_element(geo, c, e);
      s += static_cast<acc_t>(g[shuffle.sum_to_output(geo, i)]) *
           normalized(static_cast<acc_t>(group.y[j][i]), m, r);
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) sums[kc] = s;
  }
}

// Over the elements f of the (shuffled) output gradient g: the group's input gradients, and the
// rest's gradient where grad_rest is set (the first group's launch).
template <typename scalar_t, typename acc_t>
__global__ void input_grad_kernel(Group<scalar_t> group, ChannelGeometry geo, Shuffle shuffle,
                                  const scalar_t* __restrict__ g, const acc_t* __restrict__ w,
                                  const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                                  const acc_t* __restrict__ sums, int64_t K,
                                  scalar_t* __restrict__ grad_rest) {
  const int64_t n = shuffle.numel(geo);
  const acc_t count = static_cast<acc_t>(geo.count());
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; f < n;
       f += stride) {
    int64_t e = 0, r = 0;
    if (!shuffle.locate(geo, f, &e, &r)) {
      if (grad_rest) grad_rest[r] = g[f];
      continue;
    }
    const int64_t c = e / geo.inner % geo.C;
    const acc_t ge = static_cast<acc_t>(g[f]);
    const acc_t mean_g = sums[K * geo.C + c] / count;
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (j < group.count && group.grad_y[j]) {
        const int k = group.k[j];
        const int64_t kc = static_cast<int64_t>(k) * geo.C + c;
        const acc_t r = invstd[kc];
        group.grad_y[j][e] = static_cast<scalar_t>(
            group.batch[j]
                ? batch_norm_weighted_sum_input_grad(w[k], r, ge,
                                                     normalized(static_cast<acc_t>(group.y[j][e]),
                                                                mean[kc], r),
                                                     mean_g, sums[kc] / count)
                : batch_norm_weighted_sum_fixed_input_grad(w[k], r, ge));
      }
    }
  }
}

// The members of `ks` in groups of kGroup.
template <typename scalar_t>
std::vector<Group<scalar_t>> groups_of(const std::vector<int>& ks) {
  std::vector<Group<scalar_t>> groups;
  for (size_t first = 0; first < ks.size(); first += kGroup) {
    Group<scalar_t> group{};
    group.count = static_cast<int>(std::min<size_t>(kGroup, ks.size() - first));
    for (int j = 0; j < group.count; ++j) group.k[j] = ks[first + j];
    groups.push_back(group);
  }
  return groups;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_weighted_sum_cuda(
    at::TensorList ys, const at::Tensor& weights, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::List<bool>& batch_stats, double eps,
    const std::optional<at::Tensor>& rest, int64_t groups) {
  BatchNormWeightedSumForward args = prepare_batch_norm_weighted_sum(
      ys, weights, mean, invstd, batch_stats, rest, groups, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(args.out.device());
  const ChannelGeometry geo = args.geo;
  const Shuffle shuffle = args.shuffle;
  const int64_t n = geo.numel();
  if (n == 0) return {args.out, args.mean, args.invstd, args.var};
  const int K = static_cast<int>(ys.size());
  std::vector<int> all(K), batch;
  for (int k = 0; k < K; ++k) {
    all[k] = k;
    if (batch_stats.get(k)) batch.push_back(k);
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.out.scalar_type(),
                                  "batch_norm_weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* mean_p = args.mean.mutable_data_ptr<acc_t>();
    acc_t* invstd_p = args.invstd.mutable_data_ptr<acc_t>();
    for (auto group : groups_of<scalar_t>(batch)) {
      for (int j = 0; j < group.count; ++j) {
        group.y[j] = args.ys[group.k[j]].const_data_ptr<scalar_t>();
      }
      stats_kernel<scalar_t, acc_t><<<dim3(geo.C, group.count), kThreads, 0, stream>>>(
          group, geo, eps, mean_p, invstd_p, args.var.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // The running sum between groups, in acc_t: the output itself when it already is acc_t and
    // unshuffled.
    acc_t* running = nullptr;
    at::Tensor running_sum;
    if (K > kGroup) {
      running_sum = args.out.scalar_type() == args.mean.scalar_type() && shuffle.groups == 1
                        ? args.out
                        : at::empty({n}, args.mean.options());
      running = running_sum.mutable_data_ptr<acc_t>();
    }
    const acc_t* w = args.weights.const_data_ptr<acc_t>();
    const auto groups = groups_of<scalar_t>(all);
    for (size_t index = 0; index < groups.size(); ++index) {
      auto group = groups[index];
      for (int j = 0; j < group.count; ++j) {
        group.y[j] = args.ys[group.k[j]].const_data_ptr<scalar_t>();
      }
      const acc_t* prior = index > 0 ? running : nullptr;
      if (index + 1 == groups.size()) {
        const scalar_t* rest_p =
            args.rest.defined() ? args.rest.const_data_ptr<scalar_t>() : nullptr;
        forward_kernel<scalar_t, acc_t, scalar_t>
            <<<blocks_for(shuffle.numel(geo)), kThreads, 0, stream>>>(
                group, geo, shuffle, rest_p, w, mean_p, invstd_p, prior,
                args.out.mutable_data_ptr<scalar_t>());
      } else {
        forward_kernel<scalar_t, acc_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
            group, geo, Shuffle{}, nullptr, w, mean_p, invstd_p, prior, running);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {args.out, args.mean, args.invstd, args.var};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor>
batch_norm_weighted_sum_backward_cuda(const at::Tensor& grad, at::TensorList ys,
                                      const at::Tensor& weights, const at::Tensor& mean,
                                      const at::Tensor& invstd, const c10::List<bool>& batch_stats,
                                      const c10::List<bool>& ys_need_grad, bool weights_need_grad,
                                      int64_t groups, bool rest_need_grad) {
  BatchNormWeightedSumBackward args = prepare_batch_norm_weighted_sum_backward(
      grad, ys, weights, mean, invstd, batch_stats, ys_need_grad, weights_need_grad, groups,
      rest_need_grad, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  const ChannelGeometry geo = args.geo;
  const Shuffle shuffle = args.shuffle;
  const int64_t n = geo.numel();
  if (n == 0 || (args.grad_ys.empty() && !weights_need_grad && !rest_need_grad)) {
    return {args.grad_ys, args.grad_weights, args.grad_rest};
  }
  const int K = static_cast<int>(ys.size());
  std::vector<int> all(K);
  for (int k = 0; k < K; ++k) all[k] = k;
  at::Tensor sums = at::zeros({K + 1, geo.C}, args.mean.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "batch_norm_weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = args.grad.const_data_ptr<scalar_t>();
    const acc_t* mean_p = args.mean.const_data_ptr<acc_t>();
    const acc_t* invstd_p = args.invstd.const_data_ptr<acc_t>();
    auto groups = groups_of<scalar_t>(all);
    // Only rest's gradient wanted: no sums (input_grad_kernel then copies it alone).
    const bool need_sums = weights_need_grad || !args.grad_ys.empty();
    for (size_t index = 0; need_sums && index < groups.size(); ++index) {
      auto group = groups[index];  // y set where S_k is needed
      for (int j = 0; j < group.count; ++j) {
        const int k = group.k[j];
        const bool need = weights_need_grad || (batch_stats.get(k) && ys_need_grad.get(k));
        group.y[j] = need ? args.ys[k].const_data_ptr<scalar_t>() : nullptr;
      }
      sums_kernel<scalar_t, acc_t><<<geo.C, kThreads, 0, stream>>>(
          group, geo, shuffle, g, mean_p, invstd_p, index == 0, K,
          sums.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (weights_need_grad) {
      args.grad_weights = sums.narrow(0, 0, K).to(at::kDouble).sum(1).to(weights.scalar_type());
    }
    int next_grad = 0;
    for (size_t index = 0; index < groups.size(); ++index) {
      auto group = groups[index];
      // The first launch also copies the rest's gradient.
      scalar_t* grad_rest = index == 0 && rest_need_grad
                                ? args.grad_rest.mutable_data_ptr<scalar_t>()
                                : nullptr;
      bool any = grad_rest != nullptr;
      for (int j = 0; j < group.count; ++j) {
        const int k = group.k[j];
        group.y[j] = args.ys[k].const_data_ptr<scalar_t>();
        group.batch[j] = batch_stats.get(k);
        group.grad_y[j] = ys_need_grad.get(k)
                              ? args.grad_ys[next_grad++].mutable_data_ptr<scalar_t>()
                              : nullptr;
        any = any || group.grad_y[j];
      }
      if (!any) continue;
      input_grad_kernel<scalar_t, acc_t><<<blocks_for(shuffle.numel(geo)), kThreads, 0, stream>>>(
          group, geo, shuffle, g, args.weights.const_data_ptr<acc_t>(), mean_p, invstd_p,
          sums.const_data_ptr<acc_t>(), K, grad_rest);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {args.grad_ys, args.grad_weights, args.grad_rest};
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CUDA, m) {
  m.impl("batch_norm_weighted_sum", &batch_norm_weighted_sum_cuda);
  m.impl("batch_norm_weighted_sum_backward", &batch_norm_weighted_sum_backward_cuda);
}

}  // namespace darts_fast
