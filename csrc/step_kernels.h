// step_kernels.h -- what a device supplies to the recurrence: the fused pointwise pass of one time step,
// forward and backward, and the small per-step matrix product. The time loops (lstm_recurrence.h) are
// written once over ATen ops and call these; each backend (CPU, CUDA, emulated CUDA) implements the
// pointwise passes with lstm_math.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace lstm_ext {

// One forward step over rows [0, B) of one layer and direction. Every tensor is contiguous.
struct ForwardStepArgs {
  at::Tensor gates;   // [B, 4H] in: pre-activations; out: activated gates when keep_gates
  at::Tensor c_prev;  // [B, H] c_{t-1}
  at::Tensor h;       // [B, H] out: h_t
  at::Tensor c;       // [B, H] out: c_t; may alias c_prev (each element is read before it is written)
  bool keep_gates;    // training: leave the activated gates in `gates` for the backward
};

// One backward step over rows [0, B). Every tensor is contiguous.
struct BackwardStepArgs {
  at::Tensor gates;        // [B, 4H] activated gates kept by the forward
  at::Tensor c;            // [B, H] c_t
  at::Tensor c_prev;       // [B, H] c_{t-1}
  at::Tensor grad_h_out;   // [B, H] dL/dh_t arriving from the layer's output
  at::Tensor grad_h_next;  // [B, H] dL/dh_t arriving from step t+1 (through W_hh)
  at::Tensor grad_c;       // [B, H] in: dL/dc_t from step t+1; out: dL/dc_{t-1}, in place
  at::Tensor grad_gates;   // [B, 4H] out: dL/d(pre-activation gates)
};

class StepKernels {
 public:
  virtual ~StepKernels() = default;
  virtual void forward_pointwise(const ForwardStepArgs& args) const = 0;
  virtual void backward_pointwise(const BackwardStepArgs& args) const = 0;

  // out = a @ op(weight) (+ out when accumulate), op(weight) = weight^T when transpose_weight; out and a
  // are contiguous row blocks, weight a contiguous matrix. The per-step GEMM of the loops,
  // ATen's addmm here; a backend overrides it where a thinner call pays (the CPU, at small sizes).
  virtual void matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose_weight,
                      bool accumulate) const;
};

const StepKernels& cpu_step_kernels();
#ifdef LSTM_EXT_WITH_CUDA
const StepKernels& cuda_step_kernels();
#endif

}  // namespace lstm_ext
