// CUDA kernels of the multi-tensor ops: norm, axpy_, virtual_step, finite_difference, revert_.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "cuda/block_reduce.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "multi_tensor_host.h"
#include "multi_tensor_math.h"

namespace darts_fast {
namespace {

// A 0-dim tensor argument of a kernel: read from device memory when the tensor is on the GPU (no
// host synchronisation, and a captured graph replays with the value of the moment), passed by
// value when it is a CPU scalar.
template <typename T>
struct ScalarArg {
  const T* ptr;
  T value;
  __device__ T get() const { return ptr ? *ptr : value; }
};

// `converted` keeps the device copy in the kernel's type alive until the launch is enqueued.
template <typename T>
ScalarArg<T> scalar_arg(const at::Tensor& s, at::Tensor* converted) {
  if (s.device().is_cpu()) return {nullptr, s.item<T>()};
  *converted = s.to(c10::CppTypeToScalarType<T>::value);
  return {converted->const_data_ptr<T>(), T(0)};
}

template <typename scalar_t>
struct SumOfSquaresFunctor {
  using acc_t = at::opmath_type<scalar_t>;
  __device__ void operator()(const TensorListMeta<1>& meta, acc_t* partials) const {
    int64_t begin, end;
    const int t = chunk_range(meta, &begin, &end);
    const scalar_t* x = static_cast<const scalar_t*>(meta.addresses[0][t]);
    acc_t acc = acc_t(0);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      acc = sum_of_squares_term(acc, static_cast<acc_t>(x[i]));
    }
    __shared__ acc_t shared[32];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partials[meta.first_block + blockIdx.x] = acc;
  }
};

// One block sums all chunk partials in a fixed order (deterministic) and takes the root.
template <typename scalar_t, typename acc_t>
__global__ void finish_norm_kernel(const acc_t* __restrict__ partials, int64_t count,
                                   scalar_t* __restrict__ out) {
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) v += static_cast<double>(partials[i]);
  __shared__ double shared[32];
  v = block_sum(v, shared);
  if (threadIdx.x == 0) out[0] = static_cast<scalar_t>(sqrt(v));
}

template <typename scalar_t>
struct AxpyFunctor {
  using acc_t = at::opmath_type<scalar_t>;
  __device__ void operator()(const TensorListMeta<2>& meta, ScalarArg<acc_t> alpha) const {
    int64_t begin, end;
    const int t = chunk_range(meta, &begin, &end);
    scalar_t* y = static_cast<scalar_t*>(meta.addresses[0][t]);
    const scalar_t* x = static_cast<const scalar_t*>(meta.addresses[1][t]);
    const acc_t a = alpha.get();
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      y[i] = static_cast<scalar_t>(axpy(static_cast<acc_t>(y[i]), a, static_cast<acc_t>(x[i])));
    }
  }
};

// Lists: out, weights, grads[, momentum_buffers].
template <typename scalar_t, int depth>
struct VirtualStepFunctor {
  using acc_t = at::opmath_type<scalar_t>;
  __device__ void operator()(const TensorListMeta<depth>& meta, ScalarArg<acc_t> eta_arg,
                             acc_t mu, acc_t wd) const {
    int64_t begin, end;
    const int t = chunk_range(meta, &begin, &end);
    scalar_t* out = static_cast<scalar_t*>(meta.addresses[0][t]);
    const scalar_t* w = static_cast<const scalar_t*>(meta.addresses[1][t]);
    const scalar_t* g = static_cast<const scalar_t*>(meta.addresses[2][t]);
    const scalar_t* buf = depth == 4 ? static_cast<const scalar_t*>(meta.addresses[depth - 1][t])
                                     : nullptr;
    const acc_t eta = eta_arg.get();
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const acc_t b = buf ? static_cast<acc_t>(buf[i]) : acc_t(0);
      out[i] = static_cast<scalar_t>(virtual_sgd_step(static_cast<acc_t>(w[i]),
                                                      static_cast<acc_t>(g[i]), b, eta, mu, wd));
    }
  }
};

// Lists: out, dalpha, grads_pos, grads_neg.
template <typename scalar_t>
struct FiniteDifferenceFunctor {
  using acc_t = at::opmath_type<scalar_t>;
  __device__ void operator()(const TensorListMeta<4>& meta, ScalarArg<acc_t> r,
                             ScalarArg<acc_t> eta_arg) const {
    int64_t begin, end;
    const int t = chunk_range(meta, &begin, &end);
    scalar_t* out = static_cast<scalar_t*>(meta.addresses[0][t]);
    const scalar_t* d = static_cast<const scalar_t*>(meta.addresses[1][t]);
    const scalar_t* p = static_cast<const scalar_t*>(meta.addresses[2][t]);
    const scalar_t* n = static_cast<const scalar_t*>(meta.addresses[3][t]);
    const acc_t rr = r.get(), eta = eta_arg.get();
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      out[i] = static_cast<scalar_t>(finite_difference_hypergrad(
          static_cast<acc_t>(d[i]), static_cast<acc_t>(p[i]), static_cast<acc_t>(n[i]), eta, rr));
    }
  }
};

// Lists: tensors, saved, as bytes. Every block reads `keep` first: the usual case (keep) costs
// one launch and no copy.
struct RevertFunctor {
  __device__ void operator()(const TensorListMeta<2>& meta, ScalarArg<bool> keep) const {
    if (keep.get()) return;
    int64_t begin, end;
    const int t = chunk_range(meta, &begin, &end);
    unsigned char* dst = static_cast<unsigned char*>(meta.addresses[0][t]);
    const unsigned char* src = static_cast<const unsigned char*>(meta.addresses[1][t]);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) dst[i] = src[i];
  }
};

// The bytes of a dense tensor, in memory order (a view: writes reach the tensor).
at::Tensor bytes_of(const at::Tensor& t) {
  return t.as_strided({t.numel()}, {1}).view(at::kByte);
}

at::Tensor multi_tensor_norm_cuda(at::TensorList tensors_in) {
  TORCH_CHECK(!tensors_in.empty(), "multi_tensor_norm: tensors must be a non-empty list");
  check_tensor_lists("multi_tensor_norm", {{"tensors", tensors_in}});
  check_device_type("multi_tensor_norm", tensors_in, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(tensors_in[0].device());
  std::vector<at::Tensor> tensors;
  for (const auto& t : tensors_in) {
    tensors.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  }
  const at::ScalarType acc_type = accumulate_type(tensors[0].scalar_type());
  const int64_t chunks = mta_num_chunks(tensors);
  at::Tensor out = at::empty({}, tensors[0].options());
  at::Tensor partials = at::zeros({std::max<int64_t>(chunks, 1)}, out.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "multi_tensor_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    multi_tensor_apply<1>({tensors}, SumOfSquaresFunctor<scalar_t>(),
                          partials.mutable_data_ptr<acc_t>());
    finish_norm_kernel<scalar_t, acc_t>
        <<<1, kMtaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            partials.const_data_ptr<acc_t>(), partials.numel(), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void multi_tensor_axpy_cuda(at::TensorList ys, at::TensorList xs_in, const at::Tensor& alpha) {
  check_axpy_args(ys, xs_in, alpha, c10::DeviceType::CUDA);
  if (ys.empty()) return;
  const c10::cuda::CUDAGuard guard(ys[0].device());
  const std::vector<at::Tensor> y(ys.begin(), ys.end());
  const auto x = in_layouts_of(xs_in, ys);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ys[0].scalar_type(),
                                  "multi_tensor_axpy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor a;
    multi_tensor_apply<2>({y, x}, AxpyFunctor<scalar_t>(), scalar_arg<acc_t>(alpha, &a));
  });
}

void multi_tensor_virtual_step_cuda(at::TensorList out, at::TensorList weights_in,
                                    at::TensorList grads_in, at::TensorList bufs_in,
                                    const at::Tensor& eta, double momentum, double weight_decay) {
  const bool has_buf =
      check_virtual_step_args(out, weights_in, grads_in, bufs_in, eta, c10::DeviceType::CUDA);
  if (out.empty()) return;
  const c10::cuda::CUDAGuard guard(out[0].device());
  const std::vector<at::Tensor> o(out.begin(), out.end());
  const auto w = in_layouts_of(weights_in, out);
  const auto g = in_layouts_of(grads_in, out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out[0].scalar_type(),
                                  "multi_tensor_virtual_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor eta_converted;
    const ScalarArg<acc_t> e = scalar_arg<acc_t>(eta, &eta_converted);
    const acc_t mu = static_cast<acc_t>(momentum), wd = static_cast<acc_t>(weight_decay);
    if (has_buf) {
      multi_tensor_apply<4>({o, w, g, in_layouts_of(bufs_in, out)},
                            VirtualStepFunctor<scalar_t, 4>(), e, mu, wd);
    } else {
      multi_tensor_apply<3>({o, w, g}, VirtualStepFunctor<scalar_t, 3>(), e, mu, wd);
    }
  });
}

std::vector<at::Tensor> multi_tensor_finite_difference_cuda(at::TensorList dalpha,
                                                            at::TensorList pos_in,
                                                            at::TensorList neg_in,
                                                            const at::Tensor& r,
                                                            const at::Tensor& eta) {
  std::vector<at::Tensor> outs =
      prepare_finite_difference(dalpha, pos_in, neg_in, r, eta, c10::DeviceType::CUDA);
  if (dalpha.empty()) return outs;
  const c10::cuda::CUDAGuard guard(dalpha[0].device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outs[0].scalar_type(),
                                  "multi_tensor_finite_difference_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor r_converted, eta_converted;
    multi_tensor_apply<4>({outs, in_layouts_of(dalpha, outs), in_layouts_of(pos_in, outs),
                           in_layouts_of(neg_in, outs)},
                          FiniteDifferenceFunctor<scalar_t>(), scalar_arg<acc_t>(r, &r_converted),
                          scalar_arg<acc_t>(eta, &eta_converted));
  });
  return outs;
}

void multi_tensor_revert_cuda(at::TensorList tensors, at::TensorList saved,
                              const at::Tensor& keep) {
  check_revert_args(tensors, saved, keep, c10::DeviceType::CUDA);
  if (tensors.empty()) return;
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  std::vector<at::Tensor> dst, src;
  for (size_t i = 0; i < tensors.size(); ++i) {
    dst.push_back(bytes_of(tensors[i]));
    src.push_back(bytes_of(in_layout_of(saved[i], tensors[i])));
  }
  at::Tensor keep_converted;
  multi_tensor_apply<2>({dst, src}, RevertFunctor(), scalar_arg<bool>(keep, &keep_converted));
}

}  // namespace

TORCH_LIBRARY_IMPL(darts_fast, CUDA, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm_cuda);
  m.impl("multi_tensor_axpy_", &multi_tensor_axpy_cuda);
  m.impl("multi_tensor_virtual_step", &multi_tensor_virtual_step_cuda);
  m.impl("multi_tensor_finite_difference", &multi_tensor_finite_difference_cuda);
  m.impl("multi_tensor_revert_", &multi_tensor_revert_cuda);
}

}  // namespace darts_fast
