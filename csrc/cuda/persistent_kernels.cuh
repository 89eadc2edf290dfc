// persistent_kernels.cuh -- the persistent CUDA kernels of the plain LSTM cell: one cooperative launch runs
// a whole time loop of one (layer, direction), forward or backward, instead of a GEMM and a pointwise
// launch per step (pointwise_kernels.cuh).
//
// Each block owns a slice of the hidden units, all four gate columns of them, and keeps its slice of
// W_hh in dynamic shared memory for every step. Forward, per step: stage the live rows' h_{t-1} in shared
// memory, compute the slice's gate columns of h_{t-1} W_hh^T, add the hoisted input projection, run the
// fused update of lstm_math.h, write h_t and c_t (training: the activated gates), then one grid_sync()
// (the next step reads every unit of h_t). Backward, per step in reverse: the slice's gate gradients
// (lstm_math.h's cell_backward), grid_sync(), then the slice's columns of dL/dh_{t-1} from every unit's
// gate gradients and the slice's columns of W_hh, kept in shared memory; dL/dc stays with its block.
//
// Every dot product has one fixed order (k_split threads sum interleaved parts, then a fixed shuffle
// tree), no atomics: the results are bitwise repeatable and do not depend on how blocks are scheduled.
// Buffers written during the launch (h, c, the gate gradients) are read with plain loads after a barrier,
// never through a const __restrict__ pointer that would let the compiler use the non-coherent cache.
//
// Device code only, no torch headers: compiled by nvcc (persistent_cuda.cu) and by the host compiler
// under csrc/emulated/cuda_emulation.h (persistent_emulated.cpp). The geometry is persistent_launch.h's.
#pragma once

#include <cstdint>

#include "../lstm_math.h"
#include "device_primitives.cuh"

namespace lstm_ext {
namespace cuda {

// One step as a kernel walks it (persistent_launch.h builds the table): its live rows are rows
// [offset, offset + rows) of the sequence buffers and rows [0, rows) of the batch's per-sequence buffers;
// the first `continuing` of them take h_{t-1}, c_{t-1} from the direction's previous step (its rows start
// at prev_offset), the others from h0/c0.
struct PersistentStep {
  int64_t offset;
  int64_t rows;
  int64_t continuing;
  int64_t prev_offset;
};

constexpr int kMaxPersistentThreads = 1024;

// Where a block keeps what in its dynamic shared memory, and how its threads share the dot products.
// Forward: `weights` [4 * units_per_block][weight_stride] (column gate * units + u is W_hh's row
// gate * H + first unit + u), `stage` [batch][stage_stride] (h_{t-1} of the live rows), `products`
// [batch][4 * units_per_block] acc_t. Backward: `weights` [units_per_block][weight_stride] (row j is W_hh's
// column first unit + j), `stage` [batch][stage_stride] (the live rows' gate gradients), no products.
struct PersistentLayout {
  int64_t units_per_block;
  int64_t k_split;  // threads per dot product: a power of two, at most a warp
  int64_t weight_stride;
  int64_t stage_stride;
  int64_t stage_offset;     // bytes from the start of the block's dynamic shared memory
  int64_t products_offset;  // bytes; forward only
};

template <typename scalar_t>
struct PersistentForwardParams {
  const PersistentStep* steps;  // in the direction's order
  int64_t step_count;
  int64_t hidden;
  const scalar_t* weight_hh;  // [4H, H]
  scalar_t* gates;            // rows of the steps from sequence row gates_first_row, [*, 4H]
  int64_t gates_first_row;
  const scalar_t* h0;  // [B, H]
  const scalar_t* c0;  // [B, H]
  scalar_t* output;    // [N, H]
  scalar_t* cells;     // [N, H] training, else null
  scalar_t* c_state;   // [B, H] inference, else null
  bool keep_gates;
  PersistentLayout layout;
  int64_t planted_early_return_step;  // the emulation's tests only (-1: none); nvcc never reads it
};

template <typename scalar_t>
struct PersistentBackwardParams {
  const PersistentStep* steps;  // in the backward's order: the direction's last step first
  int64_t step_count;
  int64_t hidden;
  const scalar_t* weight_hh;    // [4H, H]
  const scalar_t* gates;        // [N, 4H] the kept activated gates
  const scalar_t* cells;        // [N, H] the kept c_t
  const scalar_t* c0;           // [B, H]
  const scalar_t* grad_output;  // [N, H]
  scalar_t* grad_h;             // [B, H] in: grad_h_n; out: dL/dh0
  scalar_t* grad_c;             // [B, H] in: grad_c_n; out: dL/dc0
  scalar_t* grad_gates;         // [N, 4H] out
  PersistentLayout layout;
};

// This block's units: [first, first + count), count 0 for a block past the last unit.
struct BlockUnits {
  int64_t first;
  int64_t count;
};

__device__ __forceinline__ BlockUnits block_units(int64_t hidden, int64_t units_per_block) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * units_per_block;
  const int64_t left = hidden - first;
  return {first, left <= 0 ? int64_t{0} : (left < units_per_block ? left : units_per_block)};
}

// store(row, col, sum_k a[row][k] * b[col][k]) for rows x cols products of length k_len, a and b rows
// of shared memory. k_split consecutive threads share a product: thread `lane` sums k = lane, lane +
// k_split, ... (neighbouring threads read neighbouring elements), then a fixed shuffle tree adds the
// parts. Every thread of the block runs the same trips, so the warps' shuffles are whole (a k_split above
// one needs whole warps: the plan's).
template <typename scalar_t, typename acc_t, typename Store>
__device__ __forceinline__ void block_products(const scalar_t* a, int64_t a_stride, const scalar_t* b, int64_t b_stride,
                                               int64_t rows, int64_t cols, int64_t k_len, int64_t k_split,
                                               const Store& store) {
  const int64_t lane = static_cast<int64_t>(threadIdx.x) & (k_split - 1);
  const int64_t group = static_cast<int64_t>(threadIdx.x) / k_split;
  const int64_t groups = static_cast<int64_t>(blockDim.x) / k_split;
  const int64_t products = rows * cols;
  for (int64_t first = 0; first < products; first += groups) {
    const int64_t product = first + group;
    const bool mine = group < groups && product < products;
    const int64_t row = mine ? product / cols : 0;
    const int64_t col = mine ? product - row * cols : 0;
    acc_t sum = acc_t(0);
    if (mine) {
      const scalar_t* a_row = a + row * a_stride;
      const scalar_t* b_row = b + col * b_stride;
      for (int64_t k = lane; k < k_len; k += k_split) {
        sum += static_cast<acc_t>(a_row[k]) * static_cast<acc_t>(b_row[k]);
      }
    }
    for (int64_t offset = k_split / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(kFullWarpMask, sum, static_cast<unsigned>(offset), static_cast<int>(k_split));
    }
    if (mine && lane == 0) {
      store(row, col, sum);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxPersistentThreads)
    lstm_persistent_forward_kernel(PersistentForwardParams<scalar_t> p) {
  LSTM_EXT_DYNAMIC_SHARED(unsigned char, shared);
  const PersistentLayout layout = p.layout;
  const int64_t H = p.hidden, U = layout.units_per_block;
  const BlockUnits units = block_units(H, U);
  const int64_t columns = 4 * units.count;
  scalar_t* weights = reinterpret_cast<scalar_t*>(shared);
  scalar_t* stage = reinterpret_cast<scalar_t*>(shared + layout.stage_offset);
  acc_t* products = reinterpret_cast<acc_t*>(shared + layout.products_offset);
  const int64_t thread = threadIdx.x, threads = blockDim.x;

  for (int64_t e = thread; e < columns * H; e += threads) {
    const int64_t column = e / H, k = e - column * H;
    const int64_t gate = column / units.count, u = column - gate * units.count;
    weights[column * layout.weight_stride + k] = p.weight_hh[(gate * H + units.first + u) * H + k];
  }
  for (int64_t s = 0; s < p.step_count; ++s) {
    const PersistentStep step = p.steps[s];
#if defined(LSTM_EXT_CUDA_EMULATION)
    // A test plants a thread that leaves early, to see the emulation report the barrier it misses.
    if (s == p.planted_early_return_step && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) {
      return;
    }
#endif
    for (int64_t row = 0; columns > 0 && row < step.rows; ++row) {
      const scalar_t* h_prev = row < step.continuing ? p.output + (step.prev_offset + row) * H : p.h0 + row * H;
      for (int64_t k = thread; k < H; k += threads) {
        stage[row * layout.stage_stride + k] = h_prev[k];
      }
    }
    __syncthreads();  // the stage is whole (and, at the first step, the weights)
    block_products<scalar_t, acc_t>(stage, layout.stage_stride, weights, layout.weight_stride, step.rows, columns, H,
                                    layout.k_split, [&](int64_t row, int64_t column, acc_t sum) {
                                      products[row * 4 * U + column] = sum;
                                    });
    __syncthreads();  // every gate column of the slice is summed
    for (int64_t e = thread; e < step.rows * units.count; e += threads) {
      const int64_t row = e / units.count, u = e - row * units.count, unit = units.first + u;
      scalar_t* g = p.gates + (step.offset - p.gates_first_row + row) * 4 * H + unit;
      const acc_t* sums = products + row * 4 * U + u;
      const math::Gates<acc_t> pre{static_cast<acc_t>(g[0]) + sums[0],
                                   static_cast<acc_t>(g[H]) + sums[units.count],
                                   static_cast<acc_t>(g[2 * H]) + sums[2 * units.count],
                                   static_cast<acc_t>(g[3 * H]) + sums[3 * units.count]};
      const bool from_previous = row < step.continuing;
      scalar_t* c_out = p.cells != nullptr ? p.cells + (step.offset + row) * H + unit : p.c_state + row * H + unit;
      const scalar_t c_prev = p.cells == nullptr ? *c_out
                              : from_previous    ? p.cells[(step.prev_offset + row) * H + unit]
                                                 : p.c0[row * H + unit];
      const math::CellForward<acc_t> out = math::cell_forward(pre, static_cast<acc_t>(c_prev));
      *c_out = static_cast<scalar_t>(out.c);
      p.output[(step.offset + row) * H + unit] = static_cast<scalar_t>(out.h);
      if (p.keep_gates) {
        g[0] = static_cast<scalar_t>(out.act.i);
        g[H] = static_cast<scalar_t>(out.act.f);
        g[2 * H] = static_cast<scalar_t>(out.act.g);
        g[3 * H] = static_cast<scalar_t>(out.act.o);
      }
    }
    grid_sync();  // the next step reads every unit of h_t
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxPersistentThreads)
    lstm_persistent_backward_kernel(PersistentBackwardParams<scalar_t> p) {
  LSTM_EXT_DYNAMIC_SHARED(unsigned char, shared);
  const PersistentLayout layout = p.layout;
  const int64_t H = p.hidden, G = 4 * p.hidden;
  const BlockUnits units = block_units(H, layout.units_per_block);
  scalar_t* weights = reinterpret_cast<scalar_t*>(shared);
  scalar_t* stage = reinterpret_cast<scalar_t*>(shared + layout.stage_offset);
  const int64_t thread = threadIdx.x, threads = blockDim.x;

  for (int64_t e = thread; e < units.count * G; e += threads) {
    const int64_t j = e / G, k = e - j * G;
    weights[j * layout.weight_stride + k] = p.weight_hh[k * H + units.first + j];
  }
  for (int64_t s = 0; s < p.step_count; ++s) {
    const PersistentStep step = p.steps[s];
    // The slice's gate gradients; grad_h of its units is its own block's product of the step before.
    for (int64_t e = thread; e < step.rows * units.count; e += threads) {
      const int64_t row = e / units.count, unit = units.first + (e - row * units.count);
      const int64_t gate_offset = (step.offset + row) * G + unit, state = row * H + unit;
      const scalar_t* g = p.gates + gate_offset;
      const math::Gates<acc_t> act{static_cast<acc_t>(g[0]), static_cast<acc_t>(g[H]), static_cast<acc_t>(g[2 * H]),
                                   static_cast<acc_t>(g[3 * H])};
      const acc_t grad_h =
          static_cast<acc_t>(p.grad_output[(step.offset + row) * H + unit]) + static_cast<acc_t>(p.grad_h[state]);
      const scalar_t c_prev =
          row < step.continuing ? p.cells[(step.prev_offset + row) * H + unit] : p.c0[state];
      const math::CellBackward<acc_t> out =
          math::cell_backward(act, static_cast<acc_t>(p.cells[(step.offset + row) * H + unit]),
                              static_cast<acc_t>(c_prev), grad_h, static_cast<acc_t>(p.grad_c[state]));
      scalar_t* dg = p.grad_gates + gate_offset;
      dg[0] = static_cast<scalar_t>(out.grad_pre.i);
      dg[H] = static_cast<scalar_t>(out.grad_pre.f);
      dg[2 * H] = static_cast<scalar_t>(out.grad_pre.g);
      dg[3 * H] = static_cast<scalar_t>(out.grad_pre.o);
      p.grad_c[state] = static_cast<scalar_t>(out.grad_c_prev);
    }
    grid_sync();  // the product reads every unit's gate gradients of the step
    for (int64_t row = 0; units.count > 0 && row < step.rows; ++row) {
      for (int64_t k = thread; k < G; k += threads) {
        stage[row * layout.stage_stride + k] = p.grad_gates[(step.offset + row) * G + k];
      }
    }
    __syncthreads();  // the stage is whole (and, at the first step, the weights)
    block_products<scalar_t, acc_t>(stage, layout.stage_stride, weights, layout.weight_stride, step.rows, units.count,
                                    G, layout.k_split, [&](int64_t row, int64_t j, acc_t sum) {
                                      p.grad_h[row * H + units.first + j] = static_cast<scalar_t>(sum);
                                    });
    __syncthreads();  // the next step's gate gradients read this step's grad_h, the next stage overwrites this one
  }
}

}  // namespace cuda
}  // namespace lstm_ext
