// layer_ops.h -- the op bodies shared by every backend's registration: check the arguments, make them
// contiguous rows, run the recurrence with the given pointwise steps, return the schema's tuple.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "step_kernels.h"

namespace lstm_ext {

// The schemas' argument lists, one copy for every library that registers layer ops. input is
// [T, B, I], or packed rows [N, I] with batch_sizes (a PackedSequence's, on the CPU). With weight_hr
// (nn.LSTM's proj_size) the output and h are projected to proj_size, and `unprojected` keeps the h
// before the projection for the backward. Without need_grad_input the backward skips grad_input (one
// of its large GEMMs) and returns an empty [0] for it: a first layer's input rarely needs a gradient.
#define LSTM_EXT_LAYER_FORWARD_ARGS                                                                  \
  "Tensor input, Tensor? batch_sizes, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "       \
  "Tensor? bias_hh, Tensor? weight_hr, Tensor h0, Tensor c0, bool reverse, bool training"
#define LSTM_EXT_LAYER_FORWARD_RETURNS \
  "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor unprojected)"
#define LSTM_EXT_LAYER_BACKWARD_ARGS                                                                      \
  "Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor? batch_sizes, "            \
  "Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor h0, Tensor c0, Tensor output, "         \
  "Tensor gates, Tensor cells, Tensor unprojected, bool reverse, bool has_bias, bool need_grad_input"
#define LSTM_EXT_LAYER_BACKWARD_RETURNS                                                              \
  "(Tensor grad_input, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias, "                 \
  "Tensor grad_weight_hr, Tensor grad_h0, Tensor grad_c0)"

using LayerForwardTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LayerBackwardTuple =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LayerForwardTuple run_layer_forward(const char* op, const StepKernels& steps, const at::Tensor& input,
                                    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                                    const std::optional<at::Tensor>& bias_hh,
                                    const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                    const at::Tensor& c0, bool reverse, bool training);

LayerBackwardTuple run_layer_backward(const char* op, const StepKernels& steps, const at::Tensor& grad_output,
                                      const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                      const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                      const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& output, const at::Tensor& gates,
                                      const at::Tensor& cells, const at::Tensor& unprojected, bool reverse,
                                      bool has_bias, bool need_grad_input);

}  // namespace lstm_ext
