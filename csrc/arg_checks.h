// arg_checks.h -- argument validation shared by every op: each failure names the op, the argument,
// what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "sequence_layout.h"

namespace lstm_ext {

// The sizes every argument of a layer op is checked against, taken from input, batch_sizes and
// weight_hh.
struct LayerSizes {
  SequenceLayout layout;
  bool packed;  // input is [N, I] with batch_sizes, else [T, B, I]
  int64_t I, H;

  // The shape of a per-step tensor with `features` columns: [T, B, features] or [N, features].
  std::vector<int64_t> sequence_shape(int64_t features) const;
};

// input [T, B, I] (or [N, I] with batch_sizes), weight_ih [4H, I], weight_hh [4H, H], bias_ih/bias_hh
// [4H] (both or neither), h0/c0 [B, H]; one dtype, one device, a dtype the device supports.
LayerSizes check_layer_forward_args(const char* op, const at::Tensor& input, const at::Tensor& batch_sizes,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& bias_ih, const at::Tensor& bias_hh, const at::Tensor& h0,
                                    const at::Tensor& c0);

// The forward's arguments again, plus the gradients and what the forward kept for the backward.
LayerSizes check_layer_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                     const at::Tensor& grad_c_n, const at::Tensor& input,
                                     const at::Tensor& batch_sizes, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh,
                                     const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& output,
                                     const at::Tensor& gates, const at::Tensor& cells);

}  // namespace lstm_ext
