// step_kernels.h -- what a device supplies to the recurrence: the fused pointwise pass of one time step,
// forward and backward, the small per-step matrix product, and how the batch is split into chunks that
// run their recurrences independently. The time loops (lstm_recurrence.h) are written once and call
// these; each backend (CPU, CUDA, emulated CUDA) implements the pointwise passes with lstm_math.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

namespace lstm_ext {

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

// One forward step over the rows of `gates`. Every block has the same rows.
struct ForwardStepArgs {
  at::ScalarType dtype;
  RowBlock gates;   // [B, 4H] in: pre-activations; out: activated gates when keep_gates
  RowBlock c_prev;  // [B, H] c_{t-1}
  RowBlock h;       // [B, H] out: h_t
  RowBlock c;       // [B, H] out: c_t; may alias c_prev (each element is read before it is written)
  bool keep_gates;  // training: leave the activated gates in `gates` for the backward
};

// One backward step over the rows of `gates`. Every block has the same rows.
struct BackwardStepArgs {
  at::ScalarType dtype;
  RowBlock gates;        // [B, 4H] activated gates kept by the forward
  RowBlock c;            // [B, H] c_t
  RowBlock c_prev;       // [B, H] c_{t-1}
  RowBlock grad_h_out;   // [B, H] dL/dh_t arriving from the layer's output
  RowBlock grad_h_next;  // [B, H] dL/dh_t arriving from step t+1 (through W_hh)
  RowBlock grad_c;       // [B, H] in: dL/dc_t from step t+1; out: dL/dc_{t-1}, in place
  RowBlock grad_gates;   // [B, 4H] out: dL/d(pre-activation gates)
};

// A weight of the per-step matmul, prepared once per pass. `packed` is what the backend made of it
// (the CPU packs float weights into panels for its own GEMM, so that no step repacks them), undefined
// where the backend reads the weight as it is.
struct StepWeight {
  at::Tensor weight;  // contiguous, the blocks' dtype and device
  bool transpose;     // the product takes weight^T
  at::Tensor packed;
};

// Sequences [begin, end) of the batch.
struct BatchChunk {
  int64_t begin;
  int64_t end;
};
using BatchChunkFn = std::function<void(const BatchChunk&)>;

class StepKernels {
 public:
  virtual ~StepKernels() = default;
  virtual void forward_pointwise(const ForwardStepArgs& args) const = 0;
  virtual void backward_pointwise(const BackwardStepArgs& args) const = 0;

  // The weight as matmul will take it. Here the weight as it is.
  virtual StepWeight prepare_weight(const at::Tensor& weight, bool transpose) const;

  // out = a @ op(weight) (+ out when accumulate), op(weight) = weight^T when weight.transpose. ATen's
  // addmm here (cuBLAS on the current stream on CUDA); a backend overrides it where a thinner call pays
  // (the CPU).
  virtual void matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate) const;

  // Runs fn over chunks that together cover sequences [0, batch), each exactly once. Sequences never
  // interact within a layer, so chunks may run concurrently, each its whole recurrence. Here one chunk:
  // a GPU parallelises within a step; the CPU runs a chunk per thread, with no per-step synchronisation.
  virtual void for_each_batch_chunk(int64_t batch, const BatchChunkFn& fn) const;

  // Whether an inference forward over `batch` sequences ([*, input_size] in, [*, gate_width] gates)
  // projects each step's input inside the batch chunks, right before the step, instead of a block of
  // steps at a time before them. Here no: one large GEMM is what a GPU wants. The CPU does when its
  // chunks have enough work per step: no wait between the projection and the steps, and the step's
  // gates stay in cache.
  virtual bool project_input_in_chunks(int64_t batch, int64_t input_size, int64_t gate_width) const;
};

const StepKernels& cpu_step_kernels();
#ifdef LSTM_EXT_WITH_CUDA
const StepKernels& cuda_step_kernels();
#endif

}  // namespace lstm_ext
