// emulation_selftest_kernels.cuh -- small kernels that exercise what the CUDA emulation adds beyond
// elementwise code: block barriers over static shared memory, warp shuffles, dynamic shared memory, a
// grid barrier, and barriers misused on purpose. Device code only, written like csrc/cuda/*.cuh: it
// compiles with nvcc (check: a .cu that includes this file, `nvcc -arch=sm_90 -c -Xptxas -v`) and runs
// on the CPU in the tests through emulation_selftest.cpp.
#pragma once

#include <cstdint>

#include "../cuda/device_primitives.cuh"

namespace lstm_ext {
namespace selftest {

constexpr unsigned kMaxBlockThreads = 1024;

// Block b sums row b of x [gridDim.x, cols] into out[b], through shared memory and barriers only, for
// any blockDim.x: each round folds the upper part of the partial sums onto the lower part.
template <typename scalar_t>
__global__ void block_row_sum_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int cols) {
  LSTM_EXT_SHARED(scalar_t, partial, kMaxBlockThreads);
  const unsigned tid = threadIdx.x;
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  scalar_t sum = 0;
  for (int j = static_cast<int>(tid); j < cols; j += static_cast<int>(blockDim.x)) sum += row[j];
  partial[tid] = sum;
  __syncthreads();
  for (unsigned active = blockDim.x; active > 1;) {
    const unsigned kept = (active + 1) / 2;
    if (tid < active - kept) partial[tid] += partial[tid + kept];
    __syncthreads();
    active = kept;
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum_xor(scalar_t value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(lstm_ext::cuda::kFullWarpMask, value, offset);
  return value;
}

// The same sums with warp shuffles: a butterfly within each warp, one partial per warp in shared memory,
// then warp 0 folds those with __shfl_down_sync. blockDim.x must be a multiple of 32 (whole warps).
template <typename scalar_t>
__global__ void warp_row_sum_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int cols) {
  LSTM_EXT_SHARED(scalar_t, warp_sums, 32);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  scalar_t sum = 0;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x)) sum += row[j];
  sum = warp_sum_xor(sum);
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    scalar_t value = lane < warps ? warp_sums[lane] : scalar_t(0);
    for (unsigned offset = 16; offset > 0; offset /= 2)
      value += __shfl_down_sync(lstm_ext::cuda::kFullWarpMask, value, offset);
    if (lane == 0) out[blockIdx.x] = value;
  }
}

enum ShuffleKind : int { kShuffleXor = 0, kShuffleDown = 1, kShuffleUp = 2, kShuffleIndex = 3 };

// out[t] = what thread t reads in one full-mask shuffle of the values 7 t + 3, for checking the lane
// rules (segments of `width`, sources past a segment's end) against CUDA's documentation.
template <typename value_t>
__global__ void shuffle_lanes_kernel(value_t* __restrict__ out, int kind, int operand, int width) {
  const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  const value_t mine = static_cast<value_t>(7 * threadIdx.x + 3);
  const unsigned mask = lstm_ext::cuda::kFullWarpMask;
  value_t read = 0;
  switch (kind) {
    case kShuffleXor: read = __shfl_xor_sync(mask, mine, operand, width); break;
    case kShuffleDown: read = __shfl_down_sync(mask, mine, static_cast<unsigned>(operand), width); break;
    case kShuffleUp: read = __shfl_up_sync(mask, mine, static_cast<unsigned>(operand), width); break;
    default: read = __shfl_sync(mask, mine, operand, width); break;
  }
  out[t] = read;
}

// out = x with each row reversed; block b stages row b in dynamic shared memory (cols elements).
template <typename scalar_t>
__global__ void reverse_rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int cols) {
  LSTM_EXT_DYNAMIC_SHARED(scalar_t, row);
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * cols;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x)) row[j] = x[offset + j];
  __syncthreads();
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += static_cast<int>(blockDim.x))
    out[offset + j] = row[cols - 1 - j];
}

// Rounds of an exchange between blocks (cooperative launch): in round r, thread t of block b publishes
// its value in slots, the grid waits, then it takes value / 2 + the value thread t of block
// (b + r + 1) % gridDim.x published, records it in history [rounds, gridDim.x, blockDim.x], and the grid
// waits again before slots are overwritten.
__global__ void grid_exchange_kernel(const double* __restrict__ seeds, double* __restrict__ slots,
                                     double* __restrict__ history, int rounds) {
  const unsigned n = blockDim.x, t = threadIdx.x;
  const unsigned mine = blockIdx.x * n + t;
  double value = seeds[mine];
  for (int r = 0; r < rounds; ++r) {
    slots[mine] = value;
    lstm_ext::cuda::grid_sync();
    const unsigned partner = (blockIdx.x + static_cast<unsigned>(r) + 1) % gridDim.x;
    value = value * 0.5 + slots[partner * n + t];
    history[(static_cast<unsigned>(r) * gridDim.x + blockIdx.x) * n + t] = value;
    lstm_ext::cuda::grid_sync();
  }
}

// Ways to misuse a barrier; each must be reported, naming the kernel, block, thread and line.
enum BarrierFault : int {
  kEarlyReturn = 0,          // the upper half of the block returns before a __syncthreads
  kDivergentBarriers = 1,    // even threads wait at one __syncthreads, odd threads at another
  kUnevenBarrierCounts = 2,  // odd threads pass the same __syncthreads once more than even threads
  kShuffleDeadlock = 3,      // lanes 0-15 shuffle with a full mask while lanes 16-31 wait at __syncthreads
  kShuffleAfterReturn = 4,   // lane 31 returns, the others shuffle with a full mask
  kSourceNotInMask = 5,      // lanes 0-15 shuffle among themselves but read lane 20
  kGridEarlyReturn = 6,      // block 0 returns while the other blocks wait at grid_sync (cooperative)
};

__global__ void barrier_fault_kernel(int fault, int* __restrict__ out) {
  const unsigned t = threadIdx.x, lane = t % 32;
  const unsigned mask = lstm_ext::cuda::kFullWarpMask;
  int value = static_cast<int>(blockIdx.x * blockDim.x + t);
  switch (fault) {
    case kEarlyReturn:
      if (t >= blockDim.x / 2) return;
      __syncthreads();
      break;
    case kDivergentBarriers:
      if (t % 2 == 0) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case kUnevenBarrierCounts:
      for (unsigned i = 0; i <= t % 2; ++i) __syncthreads();
      break;
    case kShuffleDeadlock:
      if (lane < 16) value = __shfl_xor_sync(mask, value, 1);
      __syncthreads();
      break;
    case kShuffleAfterReturn:
      if (lane == 31) return;
      value = __shfl_xor_sync(mask, value, 1);
      break;
    case kSourceNotInMask:
      if (lane < 16) value = __shfl_sync(0x0000FFFFu, value, 20);
      break;
    case kGridEarlyReturn:
      if (blockIdx.x == 0) return;
      lstm_ext::cuda::grid_sync();
      break;
    default:
      break;
  }
  out[blockIdx.x * blockDim.x + t] = value;
}

}  // namespace selftest
}  // namespace lstm_ext
