// pointwise_kernels.cuh -- the CUDA kernels of the fused pointwise step, forward and backward.
//
// Device code only, no torch headers: compiled by nvcc for the GPU (pointwise_cuda.cu) and by the host
// compiler under csrc/emulated/cuda_emulation.h, which runs the same source on the CPU in the tests
// (pointwise_emulated.cpp). The plain cell's kernels are elementwise: one thread per (row, unit), a
// grid-stride loop, math in acc_t (float for half/bfloat16) from lstm_math.h. The variants' kernels
// (lstm_cell_rows.h) run a row per block, its reductions through shared memory and barriers. No atomics.
#pragma once

#include <cstdint>

#include "../lstm_cell_rows.h"
#include "../lstm_math.h"
#include "device_primitives.cuh"

namespace lstm_ext {
namespace cuda {

// The grid-stride loop: this thread's first element, and the step to its next one.
template <typename index_t>
__device__ __forceinline__ index_t first_index() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x);
}

template <typename index_t>
__device__ __forceinline__ index_t grid_stride() {
  return static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
}

// Forward. gates [B, 4H] holds the pre-activations (input and recurrent GEMMs, biases) and receives
// the activated gates when keep_gates. c may alias c_prev (inference updates c in place): each
// element is read by its own thread before that thread writes it, so neither is __restrict__.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void lstm_forward_pointwise_kernel(scalar_t* __restrict__ gates, const scalar_t* c_prev,
                                              scalar_t* __restrict__ h, scalar_t* c, index_t batch,
                                              index_t hidden, bool keep_gates) {
  const index_t n = batch * hidden;
  for (index_t idx = first_index<index_t>(); idx < n; idx += grid_stride<index_t>()) {
    const index_t row = idx / hidden;
    const index_t unit = idx - row * hidden;
    scalar_t* g = gates + row * 4 * hidden + unit;
    const math::Gates<acc_t> pre{static_cast<acc_t>(g[0]), static_cast<acc_t>(g[hidden]),
                                 static_cast<acc_t>(g[2 * hidden]), static_cast<acc_t>(g[3 * hidden])};
    const math::CellForward<acc_t> out = math::cell_forward(pre, static_cast<acc_t>(c_prev[idx]));
    c[idx] = static_cast<scalar_t>(out.c);
    h[idx] = static_cast<scalar_t>(out.h);
    if (keep_gates) {
      g[0] = static_cast<scalar_t>(out.act.i);
      g[hidden] = static_cast<scalar_t>(out.act.f);
      g[2 * hidden] = static_cast<scalar_t>(out.act.g);
      g[3 * hidden] = static_cast<scalar_t>(out.act.o);
    }
  }
}

// Backward. gates [B, 4H] are the kept activations; grad_c is dL/dc_t in and dL/dc_{t-1} out, in place
// (each thread reads its own element before writing it).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void lstm_backward_pointwise_kernel(const scalar_t* __restrict__ gates, const scalar_t* __restrict__ c,
                                               const scalar_t* __restrict__ c_prev,
                                               const scalar_t* __restrict__ grad_h_out,
                                               const scalar_t* __restrict__ grad_h_next, scalar_t* grad_c,
                                               scalar_t* __restrict__ grad_gates, index_t batch, index_t hidden) {
  const index_t n = batch * hidden;
  for (index_t idx = first_index<index_t>(); idx < n; idx += grid_stride<index_t>()) {
    const index_t row = idx / hidden;
    const index_t gate_offset = row * 4 * hidden + (idx - row * hidden);
    const scalar_t* g = gates + gate_offset;
    const math::Gates<acc_t> act{static_cast<acc_t>(g[0]), static_cast<acc_t>(g[hidden]),
                                 static_cast<acc_t>(g[2 * hidden]), static_cast<acc_t>(g[3 * hidden])};
    const acc_t grad_h = static_cast<acc_t>(grad_h_out[idx]) + static_cast<acc_t>(grad_h_next[idx]);
    const math::CellBackward<acc_t> out =
        math::cell_backward(act, static_cast<acc_t>(c[idx]), static_cast<acc_t>(c_prev[idx]), grad_h,
                            static_cast<acc_t>(grad_c[idx]));
    scalar_t* dg = grad_gates + gate_offset;
    dg[0] = static_cast<scalar_t>(out.grad_pre.i);
    dg[hidden] = static_cast<scalar_t>(out.grad_pre.f);
    dg[2 * hidden] = static_cast<scalar_t>(out.grad_pre.g);
    dg[3 * hidden] = static_cast<scalar_t>(out.grad_pre.o);
    grad_c[idx] = static_cast<scalar_t>(out.grad_c_prev);
  }
}

// ---- The variants: a row per block (grid-stride over rows), lstm_cell_rows.h's algorithm. ----

// One value at a time, stored as scalar_t (or, for sums kept across rows, acc_t), computed in acc_t.
template <typename scalar_t, typename acc_t>
struct ThreadLanes {
  using type = acc_t;
  template <typename P>
  __device__ __forceinline__ acc_t load(const P* p) const {
    return static_cast<acc_t>(*p);
  }
  template <typename P>
  __device__ __forceinline__ void store(P* p, acc_t v) const {
    *p = static_cast<P>(v);
  }
};

constexpr int kMaxRowThreads = 1024;

// cell_rows' executor for a block: thread k takes units k, k + blockDim.x, ...; a sum is each thread's
// partial sum, then a tree over the threads in shared memory, the same order on every run.
template <typename scalar_t, typename acc_t>
struct BlockRowExec {
  acc_t* partial;  // [blockDim.x] shared

  template <typename F>
  __device__ __forceinline__ void units(int64_t n, const F& f) const {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      f(ThreadLanes<scalar_t, acc_t>{}, j);
    }
  }
  template <typename F>
  __device__ __forceinline__ acc_t sum(int64_t n, const F& f) const {
    acc_t own = acc_t(0);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      own += f(ThreadLanes<scalar_t, acc_t>{}, j);
    }
    partial[threadIdx.x] = own;
    __syncthreads();
    unsigned width = 1;
    while (width < blockDim.x) {
      width <<= 1;
    }
    for (unsigned half = width >> 1; half > 0; half >>= 1) {
      if (threadIdx.x < half && threadIdx.x + half < blockDim.x) {
        partial[threadIdx.x] += partial[threadIdx.x + half];
      }
      __syncthreads();
    }
    const acc_t total = partial[0];
    __syncthreads();  // every thread has read the total before the next sum writes `partial`
    return total;
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <typename F>
  __device__ __forceinline__ void single(const F& f) const {
    if (threadIdx.x == 0) {
      f();
    }
  }
};

// `first` is row 0's buffers (cell_rows::forward_row_at finds row r's).
template <typename scalar_t, typename acc_t>
__global__ void lstm_variant_forward_kernel(cell_rows::ForwardRow<scalar_t, acc_t> first, int64_t rows) {
  LSTM_EXT_SHARED(acc_t, partial, kMaxRowThreads);
  const BlockRowExec<scalar_t, acc_t> ex{partial};
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    cell_rows::forward_row(ex, cell_rows::forward_row_at(first, row));
    __syncthreads();  // the next row's first sum reuses `partial`
  }
}

template <typename scalar_t, typename acc_t>
__global__ void lstm_variant_backward_kernel(cell_rows::BackwardRow<scalar_t, acc_t> first, int64_t rows) {
  LSTM_EXT_SHARED(acc_t, partial, kMaxRowThreads);
  const BlockRowExec<scalar_t, acc_t> ex{partial};
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    cell_rows::backward_row(ex, cell_rows::backward_row_at(first, row));
    __syncthreads();
  }
}

// Layer norm of the input product over every row of the sequence (cell_rows::input_norm_row), a row per block.
template <typename scalar_t, typename acc_t>
__global__ void lstm_input_norm_kernel(cell_rows::InputNormRow<scalar_t> first, int64_t rows) {
  LSTM_EXT_SHARED(acc_t, partial, kMaxRowThreads);
  const BlockRowExec<scalar_t, acc_t> ex{partial};
  const int64_t width = first.width;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    cell_rows::InputNormRow<scalar_t> r = first;
    r.gates += row * width;
    r.normalized += row * width;
    r.stats += row * 4;
    cell_rows::input_norm_row<scalar_t, acc_t>(ex, r);
    __syncthreads();
  }
}

// Its backward: block b takes rows b, b + gridDim.x, ... in order and adds their weight terms to its own row
// of block_sums [gridDim.x, 2, width] (zeros before the launch), which the caller sums over blocks: no atomics.
template <typename scalar_t, typename acc_t>
__global__ void lstm_input_norm_backward_kernel(cell_rows::InputNormBackwardRow<scalar_t, acc_t> first,
                                                int64_t rows, acc_t* block_sums) {
  LSTM_EXT_SHARED(acc_t, partial, kMaxRowThreads);
  const BlockRowExec<scalar_t, acc_t> ex{partial};
  const int64_t width = first.width;
  cell_rows::InputNormBackwardRow<scalar_t, acc_t> r = first;
  r.sum_weight_ih = block_sums + blockIdx.x * 2 * width;
  r.sum_weight_hh = r.sum_weight_ih + width;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t at = row * width;
    r.grad_gates = first.grad_gates + at;
    r.normalized = first.normalized + at;
    r.normalized_recurrent = first.normalized_recurrent + at;
    r.stats = first.stats + row * 4;
    r.grad_product = first.grad_product + at;
    cell_rows::input_norm_backward_row<scalar_t, acc_t>(ex, r);
    __syncthreads();
  }
}

// A 1-D launch: `blocks` blocks of `threads` threads; the grid-stride loop covers what the grid does not.
struct PointwiseLaunchConfig {
  unsigned blocks;
  unsigned threads;
};

inline PointwiseLaunchConfig pointwise_launch_config(int64_t elements, int threads_per_block, int64_t max_blocks) {
  const int64_t wanted = (elements + threads_per_block - 1) / threads_per_block;
  const int64_t blocks = wanted < max_blocks ? wanted : max_blocks;
  return {static_cast<unsigned>(blocks > 0 ? blocks : 1), static_cast<unsigned>(threads_per_block)};
}

// 32-bit indexing is safe when every offset a thread forms (up to 4 * B * H into the gates) plus one
// grid stride stays below INT32_MAX; otherwise the kernels run with 64-bit indices.
inline bool fits_32bit_indexing(int64_t batch, int64_t hidden, PointwiseLaunchConfig config) {
  const int64_t stride = static_cast<int64_t>(config.blocks) * config.threads;
  return 4 * batch * hidden + stride < static_cast<int64_t>(INT32_MAX);
}

}  // namespace cuda
}  // namespace lstm_ext
