// lstm_cell.h -- the LSTM cell as the recurrence sees it: its arguments beyond the layer's (the variants'
// parameters, per-step masks and rates), what a training forward keeps for the backward, and its
// gradients. The math of a step is lstm_math.h's; the per-step buffers a backend's pointwise pass reads
// and writes are step_kernels.h's ForwardStepArgs/BackwardStepArgs. Every variant is off by default and
// then the cell is nn.LSTM's, bit for bit.
//
// Variants (H hidden units, P the width of h: proj_size or H):
//   weight_peephole [3H] (i, f, o): i, f see p * c_{t-1}; o sees p_o * c~_t (the step's new cell).
//   layer_norm_weight_ih/_hh [4H], layer_norm_weight_c/bias_c [H] (all four or none):
//     G = LN(x W_ih^T) * w_ih + LN(h W_hh^T) * w_hh + b_ih + b_hh,  h~ = o * tanh(LN(c~) * w_c + b_c).
//   recurrent_mask [B, P]: the recurrent product reads recurrent_mask * h_{t-1} (variational dropout).
//   zoneout_cell_mask / zoneout_hidden_mask [N, H], else the rates zoneout_cell / zoneout_hidden:
//     c_t = d_c * c_{t-1} + (1 - d_c) * c~_t, h_t likewise (no projection).
#pragma once

#include <ATen/core/Tensor.h>

#define LSTM_EXT_CELL_ARGS(X)                     \
  X(OptionalTensor, weight_peephole, "=None")     \
  X(OptionalTensor, layer_norm_weight_ih, "=None") \
  X(OptionalTensor, layer_norm_weight_hh, "=None") \
  X(OptionalTensor, layer_norm_weight_c, "=None") \
  X(OptionalTensor, layer_norm_bias_c, "=None")   \
  X(OptionalTensor, recurrent_mask, "=None")      \
  X(OptionalTensor, zoneout_cell_mask, "=None")   \
  X(OptionalTensor, zoneout_hidden_mask, "=None") \
  X(Float, zoneout_cell, "=0.")                   \
  X(Float, zoneout_hidden, "=0.")

// Kept by a training forward, per row of the sequence: the activated gates [N, 4H] and c_t [N, H]; with
// layer norm the normalized input and recurrent products [N, 8H] and each row's statistics [N, 4]
// (rstd of the input product, rstd of the recurrent product, mean and rstd of c~).
#define LSTM_EXT_CELL_SAVED(X) \
  X(Tensor, gates, "")         \
  X(Tensor, cells, "")         \
  X(Tensor, normalized, "")    \
  X(Tensor, row_stats, "")

#define LSTM_EXT_CELL_GRADS(X)                  \
  X(Tensor, grad_weight_peephole, "")           \
  X(Tensor, grad_layer_norm_weight_ih, "")      \
  X(Tensor, grad_layer_norm_weight_hh, "")      \
  X(Tensor, grad_layer_norm_weight_c, "")       \
  X(Tensor, grad_layer_norm_bias_c, "")

namespace lstm_ext {

// The cell's arguments as the recurrence takes them: contiguous, masks as rows; undefined where off.
struct CellParams {
  at::Tensor weight_peephole;
  at::Tensor layer_norm_weight_ih, layer_norm_weight_hh, layer_norm_weight_c, layer_norm_bias_c;
  at::Tensor recurrent_mask;                          // [B, P]
  at::Tensor zoneout_cell_mask, zoneout_hidden_mask;  // [N, H]
  double zoneout_cell = 0, zoneout_hidden = 0;

  bool layer_norm() const { return layer_norm_weight_hh.defined(); }
  bool zoneout() const {
    return zoneout_cell_mask.defined() || zoneout_hidden_mask.defined() || zoneout_cell != 0 || zoneout_hidden != 0;
  }
  bool zoneout_hidden_active() const { return zoneout_hidden_mask.defined() || zoneout_hidden != 0; }
  // Whether the step is nn.LSTM's plain cell, which the backends run on their plain pointwise passes.
  bool plain() const { return !weight_peephole.defined() && !layer_norm() && !recurrent_mask.defined() && !zoneout(); }
};

}  // namespace lstm_ext
