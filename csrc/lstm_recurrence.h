// lstm_recurrence.h -- the forward and backward time loops of one LSTM layer and direction, written
// once for every device. What runs inside a step (the products with the weights, the fused pointwise
// pass) and how the batch is split into independent chunks is the device's StepKernels; the weight
// gradients are ATen GEMMs after the loop. Steps are carved out of the buffers as RowBlocks (pointers),
// not tensor views, which cost more than a small step's arithmetic.
//
// Sequences are rows, step after step (sequence_layout.h), so one loop serves padded batches and
// PackedSequences: at step t only the first batch_sizes[t] rows are live, and the GEMM and the pointwise
// pass shrink to them. The reverse direction walks the steps last to first, so each sequence starts at
// its own end: rows that join at step t start from their h0/c0 rows.
//
// With weight_hr (nn.LSTM's proj_size P) each step's h is projected, h = (o * tanh(c)) W_hr^T, and the
// recurrence and the output carry the projected h; without it P = H.
//
// Shapes (N = layout.rows; contiguous; checked by the ops before they get here):
//   input [N, I], h0 [B, P], c0 [B, H], output [N, P], gates [N, 4H] (activated i, f, g, o),
//   cells [N, H] (c_t); the weights as LayerWeights says, the cell's variants as lstm_cell.h says.
#pragma once

#include <ATen/core/Tensor.h>

#include "step_kernels.h"
#include "sequence_layout.h"

namespace lstm_ext {

struct LayerWeights {
  at::Tensor weight_ih;  // [4H, I]
  at::Tensor weight_hh;  // [4H, P]
  at::Tensor bias_ih;    // [4H] or undefined
  at::Tensor bias_hh;    // [4H] or undefined
  at::Tensor weight_hr;  // [P, H] (proj_size = P) or undefined (then P = H)
};

// One (layer, direction) to run forward: contiguous rows, checked by the ops (layer_ops.cpp).
struct LayerForwardProblem {
  const SequenceLayout* layout;
  at::Tensor input;  // [N, I]
  LayerWeights weights;
  CellParams cell;
  at::Tensor h0;  // [B, P]
  at::Tensor c0;  // [B, H]
  bool reverse;
  bool training;
};

struct LayerForwardResult {
  at::Tensor output;       // [N, P]
  at::Tensor h_n;          // [B, P]: each sequence's last h
  at::Tensor c_n;          // [B, H]: each sequence's last c
  at::Tensor unprojected;  // [N, H], h before the projection, when training with weight_hr, else empty
  // Kept when training, else empty (lstm_cell.h): activated gates [N, 4H], c_t [N, H], with layer norm the
  // normalized input and recurrent products [2, N, 4H] and the rows' statistics [N, 4].
  at::Tensor gates;
  at::Tensor cells;
  at::Tensor normalized;
  at::Tensor row_stats;
};

// The backward of a training forward: its problem, what it returned (as rows), and the gradients arriving.
struct LayerBackwardProblem {
  LayerForwardProblem forward;
  LayerForwardResult saved;
  at::Tensor grad_output;  // [N, P]
  at::Tensor grad_h_n;     // [B, P]
  at::Tensor grad_c_n;     // [B, H]
  at::Tensor grad_cells;   // [N, H] or undefined
  bool need_grad_input;
};

struct LayerBackwardResult {
  at::Tensor grad_input;      // [N, I], empty without need_grad_input
  at::Tensor grad_weight_ih;  // [4H, I]
  at::Tensor grad_weight_hh;  // [4H, P]
  at::Tensor grad_bias;       // [4H] (the gradient of bias_ih and of bias_hh alike), empty without bias
  at::Tensor grad_weight_hr;  // [P, H], empty without weight_hr
  at::Tensor grad_h0;         // [B, P]
  at::Tensor grad_c0;         // [B, H]
  // The cell's parameters' (empty where absent).
  at::Tensor grad_weight_peephole;
  at::Tensor grad_layer_norm_weight_ih, grad_layer_norm_weight_hh, grad_layer_norm_weight_c, grad_layer_norm_bias_c;
};

// The layer: the input projection, the time loop (the backend's own where it runs one,
// StepKernels::forward_loop / backward_loop, else the generic loop), the final states or the gradients.
LayerForwardResult lstm_layer_forward(const StepKernels& steps, const LayerForwardProblem& problem);
LayerBackwardResult lstm_layer_backward(const StepKernels& steps, const LayerBackwardProblem& problem);

}  // namespace lstm_ext
