#pragma once

// Lets one inline function serve as CPU code and as CUDA device code, so the CPU tests exercise
// exactly the arithmetic the GPU runs.
#if defined(__CUDACC__)
#define DARTS_HOST_DEVICE __host__ __device__
#else
#define DARTS_HOST_DEVICE
#endif
