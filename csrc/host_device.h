#pragma once

// Lets one inline function serve as CPU code and as CUDA device code: the CPU and CUDA kernels
// apply the same per-element formulas (csrc/*_math.h), so the CPU tests check the arithmetic the
// GPU runs. Reductions (the weight gradient of weighted_sum, multi_tensor_norm) split the work
// differently on each backend (chunks and lanes on the CPU, blocks and warps on the GPU), each in
// a fixed order, and both finish in double: the two agree to rounding, each is bit-reproducible.
#if defined(__CUDACC__)
#define DARTS_HOST_DEVICE __host__ __device__
#else
#define DARTS_HOST_DEVICE
#endif
