// step_kernels.h -- what a device supplies to the recurrence: the fused pointwise pass of one time step,
// forward and backward, the small per-step matrix product, and how the batch is split into chunks that
// run their recurrences independently. The time loops (lstm_recurrence.h) are written once and call
// these; each backend (CPU, CUDA, emulated CUDA) implements the pointwise passes with lstm_math.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>
#include <vector>

#include "lstm_cell.h"

namespace lstm_ext {

struct LayerForwardProblem;
struct LayerBackwardProblem;

// Consecutive rows of a contiguous row-major matrix, as a pointer and sizes. The loops carve each
// step's rows out of the sequence buffers with these, not with tensor views: at small sizes a tensor
// per slice per step costs more than the step's own arithmetic.
struct RowBlock {
  char* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;  // also the row stride, in elements
  int64_t itemsize = 0;

  // Rows [first, first + count) of this block.
  RowBlock sub(int64_t first, int64_t count) const {
    return {data + first * cols * itemsize, count, cols, itemsize};
  }
  template <typename T>
  T* ptr() const {
    return reinterpret_cast<T*>(data);
  }
};

// The whole of a contiguous 2-D tensor; an empty block for an undefined tensor or a
// placeholder (the empty [0] of what a pass does not keep).
RowBlock row_block(const at::Tensor& t);

// A block as a [rows, cols] tensor over the same memory (no copy), for the ATen calls that need one.
at::Tensor as_tensor(const RowBlock& block, const at::TensorOptions& options);

// Indices [begin, end): hidden units, or columns of a matrix.
struct IndexRange {
  int64_t begin;
  int64_t end;
  int64_t size() const { return end - begin; }
};

// One forward step over the rows of `gates`, units `units` of each. Every block has the same rows.
struct ForwardStepArgs {
  at::ScalarType dtype;
  RowBlock gates;   // [B, 4H] in: pre-activations; out: activated gates when keep_gates
  RowBlock c_prev;  // [B, H] c_{t-1}
  RowBlock h;       // [B, H] out: h_t
  RowBlock c;       // [B, H] out: c_t; may alias c_prev (each element is read before it is written)
  bool keep_gates;  // training: leave the activated gates in `gates` for the backward
  IndexRange units;  // [0, H) but where the backend splits the units of a step (for_each_work_share)
  // The cell's variants (lstm_cell.h): null for nn.LSTM's plain cell, and then the blocks below are empty.
  const CellParams* cell = nullptr;
  RowBlock recurrent;            // layer norm: [B, 4H] in: the raw recurrent product; out: normalized
  RowBlock stats;                // layer norm: [B, 4] out: the rows' statistics (lstm_cell.h)
  RowBlock h_prev;               // zoneout of h: [B, H] h_{t-1}
  RowBlock zoneout_cell_mask;    // [B, H], else the rate
  RowBlock zoneout_hidden_mask;  // [B, H], else the rate
};

// One backward step over the rows of `gates`, units `units` of each. Every block has the same rows.
struct BackwardStepArgs {
  at::ScalarType dtype;
  RowBlock gates;        // [B, 4H] activated gates kept by the forward
  RowBlock c;            // [B, H] c_t
  RowBlock c_prev;       // [B, H] c_{t-1}
  RowBlock grad_h_out;   // [B, H] dL/dh_t arriving from the layer's output
  RowBlock grad_h_next;  // [B, H] dL/dh_t arriving from step t+1 (through W_hh)
  RowBlock grad_c;       // [B, H] in: dL/dc_t from step t+1; out: dL/dc_{t-1}, in place
  RowBlock grad_gates;   // [B, 4H] out: dL/d(pre-activation gates)
  IndexRange units;      // as in ForwardStepArgs
  // The cell's variants (lstm_cell.h): null for the plain cell, and then the blocks below are empty.
  // grad_h_next is then the gradient through the next step's recurrent product before the recurrent mask.
  const CellParams* cell = nullptr;
  RowBlock recurrent_mask;        // [B, H]
  RowBlock carry;                 // [B, H] in/out: dL/dh that skips the recurrent product (cell_rows::BackwardRow)
  RowBlock grad_cells;            // [B, H] dL/dc_t from the cell states
  RowBlock grad_recurrent;        // layer norm: [B, 4H] out: dL/d(raw recurrent product)
  RowBlock grad_params;           // [B, K] out: the rows' terms of the cell's parameter gradients
  RowBlock normalized_recurrent;  // layer norm: [B, 4H]
  RowBlock stats;                 // layer norm: [B, 4]
  RowBlock zoneout_cell_mask;     // [B, H]
  RowBlock zoneout_hidden_mask;   // [B, H]
  int64_t peephole_terms = 0;     // where grad_params' columns of each parameter start
  int64_t layer_norm_c_terms = 0;
};

// A weight of the per-step matmul, prepared once per pass. `packed` is what the backend made of it
// (the CPU packs float weights into panels for its own GEMM, so that no step repacks them, or, where that
// would not pay, marks the weight as read in place with packed = weight), undefined where the backend
// reads the weight as it is.
struct StepWeight {
  at::Tensor weight;  // contiguous, the blocks' dtype and device
  bool transpose;     // the product takes weight^T
  at::Tensor packed;
};

// How a pass will use a prepared weight: `products` matmul calls of up to `rows` rows of `a` each.
struct WeightUse {
  int64_t rows;
  int64_t products;
};

// The input projection's bias, bias_ih + bias_hh, prepared once per pass: `sum`, or, where the backend
// adds the two parts itself as its sums start (the CPU's float products: no buffer and no pass of its
// own), `sum` undefined and the parts in `ih` and `hh`. All undefined: no bias.
struct StepBias {
  at::Tensor sum;
  at::Tensor ih;
  at::Tensor hh;
  bool defined() const { return sum.defined() || ih.defined(); }
};

// out (+)= a^T @ b (see StepKernels::weight_gradients).
struct TransposedProduct {
  at::Tensor out;
  at::Tensor a;
  at::Tensor b;
  bool accumulate;
};

// How an inference forward projects its input (the input GEMM of the steps, biases folded in):
// `block_steps` steps at a time, before those steps run, or, `in_chunks`, each batch chunk's rows of a step
// right before the step.
struct InferenceProjection {
  bool in_chunks;
  int64_t block_steps;
};

// What StepKernels::normalize_input_backward returns.
struct InputNormGrads {
  at::Tensor grad_product;    // [N, 4H] dL/d(x W_ih^T)
  at::Tensor grad_weight_ih;  // [4H] dL/d layer_norm_weight_ih
  at::Tensor grad_weight_hh;  // [4H] dL/d layer_norm_weight_hh
};

// Sequences [begin, end) of the batch.
struct BatchChunk {
  int64_t begin;
  int64_t end;
};

// Where the shares of one batch chunk meet between the phases of a step (see WorkShare).
class StepBarrier {
 public:
  virtual ~StepBarrier() = default;
  // Returns once every share of the chunk has arrived; `weight` is how many shares the caller runs.
  virtual void arrive_and_wait(int64_t weight) const = 0;
};

// One share of a pass's work: sequences `chunk`, hidden units `units` of them. A share with all units
// runs its recurrence alone. Shares that split a chunk's units run concurrently, each computing its own
// units' gate columns and state, and meet at `sync()` where the next phase reads what the others wrote:
// forward after each step (the next step's product reads all of h_t), backward between the pointwise
// pass and the product (which reads all of the step's gate gradients). Every element is still computed
// by one share, in one order: results do not depend on the split.
struct WorkShare {
  BatchChunk chunk;
  IndexRange units;
  const StepBarrier* barrier = nullptr;  // none when `units` is all of them
  int64_t barrier_weight = 1;

  void sync() const {
    if (barrier != nullptr) {
      barrier->arrive_and_wait(barrier_weight);
    }
  }
};
// A reference to the caller's callable, not a copy: nothing is allocated per pass.
using WorkShareFn = c10::function_ref<void(const WorkShare&)>;

// The forward time loop of one (layer, direction) as StepKernels::forward_loop takes it: steps
// [first_step, last_step) in the direction's order, their input already projected (biases in). A backend
// leaves exactly what the generic loop leaves (the final states are copied after the loop, from these).
struct ForwardLoopArgs {
  const LayerForwardProblem* problem;
  int64_t first_step;
  int64_t last_step;
  // [*, 4H] the steps' rows, sequence row gates_first_row first. In: the projected input; out, when
  // training: the activated gates.
  RowBlock gates;
  int64_t gates_first_row;
  RowBlock output;   // [N, H] out: h_t of the steps' rows
  RowBlock cells;    // training: [N, H] out: c_t of the steps' rows; inference: empty
  RowBlock c_state;  // inference: [B, H] in/out: each sequence's c so far (c0 until it starts); training: empty
};

// The backward time loop of one (layer, direction) as StepKernels::backward_loop takes it; the kept
// activations, grad_output and the weights are the problem's.
struct BackwardLoopArgs {
  const LayerBackwardProblem* problem;
  RowBlock grad_gates;  // [N, 4H] out: dL/d(pre-activation gates) of every row
  RowBlock grad_h;      // [B, H] in: grad_h_n; out: dL/dh0
  RowBlock grad_c;      // [B, H] in: grad_c_n; out: dL/dc0
};

class StepKernels {
 public:
  virtual ~StepKernels() = default;
  virtual void forward_pointwise(const ForwardStepArgs& args) const = 0;
  virtual void backward_pointwise(const BackwardStepArgs& args) const = 0;

  // An uninitialised buffer of a pass (the per-row ones: gates, cells, outputs, their gradients), like
  // at::empty. Here at::empty; the CPU maps the largest in huge pages (cpu/buffer_cache.h).
  virtual at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) const;

  // The weight as matmul will take it, for `use`. Here the weight as it is.
  virtual StepWeight prepare_weight(const at::Tensor& weight, bool transpose, WeightUse use) const;

  // The bias as project will take it (both undefined: none). Here their sum, with ATen.
  virtual StepBias prepare_bias(const at::Tensor& bias_ih, const at::Tensor& bias_hh) const;

  // to = from, two blocks of the same rows and columns in buffers of `options`' dtype and device (the
  // final states). Here ATen's copy_ (on CUDA on the current stream); the CPU copies the rows itself.
  virtual void copy_rows(const RowBlock& to, const RowBlock& from, const at::TensorOptions& options) const;

  // Columns `columns` of out = a @ op(weight) (+ out when accumulate), op(weight) = weight^T when
  // weight.transpose; the other columns of out are left alone. `columns` is all of out's, or, from a share
  // of split units, a gate's (or h's) columns of the share's units. ATen's addmm here (cuBLAS on the
  // current stream on CUDA); a backend overrides it where a thinner call pays (the CPU).
  virtual void matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate,
                      IndexRange columns) const;
  void matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate) const {
    matmul(out, a, weight, accumulate, IndexRange{0, out.cols});
  }

  // Columns `columns` of out = bias + a @ op(weight) (bias [n], the same for every row, as prepare_bias
  // made it; undefined: none), the input projection. Here the bias is copied into out's rows and matmul
  // adds the product to it; the CPU starts its sums from the bias (the same sums, without the pass over out).
  virtual void project(const RowBlock& out, const RowBlock& a, const StepWeight& weight, const StepBias& bias,
                       IndexRange columns) const;

  // The weight and bias gradients after the backward's loop: each product's out (+)= a^T @ b in order (a
  // [k, m], b [k, n], out [m, n]; k: rows of the sequence), and, where column_sums is defined, column_sums
  // = the sum of summed's rows ([k, m] -> [m]). Contiguous, one dtype, every out with m rows. ATen here;
  // the CPU runs its own kernels for float, all in one parallel region.
  virtual void weight_gradients(const std::vector<TransposedProduct>& products, const at::Tensor& column_sums,
                                const at::Tensor& summed) const;

  // Runs fn over shares that together cover sequences [0, batch) x units [0, hidden), each exactly once;
  // with every share's units [0, hidden) unless may_split_units (not with a projection, whose product
  // needs all of a step's units before the step's h exists). Sequences never interact within a
  // layer, so chunks of the batch may run concurrently, each its whole recurrence. Here one share: a GPU
  // parallelises within a step. The CPU runs a chunk per thread with no per-step synchronisation, and
  // splits the units of a batch too small to give every thread a chunk (WorkShare).
  virtual void for_each_work_share(int64_t batch, int64_t hidden, bool may_split_units,
                                   const WorkShareFn& fn) const;

  // How an inference forward over `steps` steps of `batch` sequences ([*, input_size] in, [*, gate_width]
  // gates of `element_size` bytes) projects its input. Here all steps in one GEMM, what a GPU wants. The
  // CPU projects a cache-sized block of steps at a time, or inside its chunks (cpu/cpu_backend.h).
  virtual InferenceProjection plan_inference_projection(int64_t batch, int64_t steps, int64_t input_size,
                                                        int64_t gate_width, int64_t element_size) const;

  // out = a * mask, elementwise over blocks of the same rows and columns (the recurrent dropout mask).
  // Here ATen's mul; the CPU multiplies the rows itself.
  virtual void multiply_rows(const RowBlock& out, const RowBlock& a, const RowBlock& mask,
                             const at::TensorOptions& options) const;

  // Layer norm of the input product, over rows of the sequence outside the loop (lstm_cell.h): in, the rows
  // of `gates` hold x W_ih^T; out, gates = LN(x W_ih^T) * weight + bias_ih + bias_hh (no bias: both undefined),
  // normalized = LN(x W_ih^T) and column 0 of `stats` its rstd. Here ATen; the CPU runs cell_rows'
  // input_norm_row over its rows.
  virtual void normalize_input(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                               const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                               const at::TensorOptions& options) const;

  // Its backward over every row after the loop: from grad_gates [N, 4H] (dL/dG), the normalized products
  // [2, N, 4H] and row_stats [N, 4] a training forward kept, and weight (layer_norm_weight_ih), the gradient of
  // x W_ih^T [N, 4H] and those of layer_norm_weight_ih and _hh [4H]. Here ATen; the CPU runs cell_rows'
  // input_norm_backward_row over its rows and sums the weights' terms in a fixed order.
  virtual InputNormGrads normalize_input_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                                  const at::Tensor& row_stats, const at::Tensor& weight) const;

  // The time-loop seam: a backend that runs a pass's whole time loop itself (a persistent kernel) does it
  // here and returns true; false (the default) runs the generic loop of lstm_recurrence.cpp. The input
  // projection before the loop and the weight gradients and grad_input after it stay the generic code's.
  virtual bool forward_loop(const ForwardLoopArgs& args) const;
  virtual bool backward_loop(const BackwardLoopArgs& args) const;
};

const StepKernels& cpu_step_kernels();
// Which instruction-set build cpu_step_kernels() runs: "avx512", "avx2" or "baseline".
const char* cpu_step_kernels_name();
#ifdef LSTM_EXT_WITH_CUDA
const StepKernels& cuda_step_kernels();
#endif

}  // namespace lstm_ext
