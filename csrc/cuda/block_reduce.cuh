#pragma once

// Sum over a thread block in a fixed order (warp shuffles, then the first warp over the warp
// sums): the same bits on every run. `shared` holds one value per warp (at most 32). The result
// is valid in thread 0; the trailing barrier lets the caller reuse `shared` at once.
template <typename acc_t>
__device__ inline acc_t block_sum(acc_t v, acc_t* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? shared[lane] : acc_t(0);
  if (warp == 0) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();
  return v;
}
