// lstm_recurrence.h -- the forward and backward time loops of one LSTM layer and direction, written
// once over ATen ops for every device. GEMMs stay in ATen (MKL/oneDNN on the CPU, cuBLAS on the current
// stream on CUDA); the per-step pointwise pass is the device's PointwiseSteps.
//
// Sequences are rows, step after step (sequence_layout.h), so one loop serves padded batches and
// PackedSequences: at step t only the first batch_sizes[t] rows are live, and the GEMM and the pointwise
// pass shrink to them. The reverse direction walks the steps last to first, so each sequence starts at
// its own end: rows that join at step t start from their h0/c0 rows.
//
// Shapes (N = layout.rows; contiguous; checked by the ops before they get here):
//   input [N, I], weight_ih [4H, I], weight_hh [4H, H], bias_ih/bias_hh [4H] or undefined,
//   h0/c0 [B, H], output [N, H], gates [N, 4H] (activated i, f, g, o), cells [N, H] (c_t).
#pragma once

#include <ATen/core/Tensor.h>

#include "pointwise_step.h"
#include "sequence_layout.h"

namespace lstm_ext {

struct LayerForwardResult {
  at::Tensor output;  // [N, H]
  at::Tensor h_n;     // [B, H]: each sequence's last h
  at::Tensor c_n;     // [B, H]: each sequence's last c
  at::Tensor gates;   // [N, 4H] when training, else empty
  at::Tensor cells;   // [N, H] when training, else empty
};

struct LayerBackwardResult {
  at::Tensor grad_input;      // [N, I]
  at::Tensor grad_weight_ih;  // [4H, I]
  at::Tensor grad_weight_hh;  // [4H, H]
  at::Tensor grad_bias;       // [4H] (the gradient of bias_ih and of bias_hh alike), empty without bias
  at::Tensor grad_h0;         // [B, H]
  at::Tensor grad_c0;         // [B, H]
};

LayerForwardResult lstm_layer_forward(const PointwiseSteps& steps, const SequenceLayout& layout,
                                      const at::Tensor& input,
                                      const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                      const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                      const at::Tensor& h0, const at::Tensor& c0, bool reverse,
                                      bool training);

LayerBackwardResult lstm_layer_backward(const PointwiseSteps& steps, const SequenceLayout& layout,
                                        const at::Tensor& grad_output,
                                        const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                        const at::Tensor& input, const at::Tensor& weight_ih,
                                        const at::Tensor& weight_hh, const at::Tensor& h0,
                                        const at::Tensor& c0, const at::Tensor& output,
                                        const at::Tensor& gates, const at::Tensor& cells, bool reverse,
                                        bool has_bias);

}  // namespace lstm_ext
