// arg_checks.h -- argument validation shared by every op: each failure names the op, the argument,
// what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "layer_op_args.h"
#include "sequence_layout.h"

namespace lstm_ext {

// The sizes every argument of a layer op is checked against, taken from input, batch_sizes and
// weight_hh.
struct LayerSizes {
  SequenceLayout layout;
  bool packed;  // input is [N, I] with batch_sizes, else [T, B, I]
  int64_t I;    // input features
  int64_t H;    // hidden size: c and the gates
  int64_t P;    // the size of h and of the output: proj_size with weight_hr, else H

  // The shape of a per-step tensor with `features` columns: [T, B, features] or [N, features].
  std::vector<int64_t> sequence_shape(int64_t features) const;
};

// input [T, B, I] (or [N, I] with batch_sizes), weight_ih [4H, I], weight_hh [4H, P], bias_ih/bias_hh
// [4H] (both or neither), weight_hr [P, H] or undefined (then P = H), h0 [B, P], c0 [B, H], the cell's
// arguments as lstm_cell.h says; one dtype, one device, a dtype the device supports.
LayerSizes check_layer_forward_args(const char* op, const LayerForwardArgs& args);

// The forward's arguments again, plus the gradients and what the forward kept for the backward.
LayerSizes check_layer_backward_args(const char* op, const LayerBackwardArgs& args);

}  // namespace lstm_ext
