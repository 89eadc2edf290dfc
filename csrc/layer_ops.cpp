// layer_ops.cpp -- see layer_ops.h.
#include "layer_ops.h"

#include "arg_checks.h"
#include "lstm_recurrence.h"

namespace lstm_ext {
namespace {

// A per-step tensor as contiguous rows [N, features].
at::Tensor as_rows(const at::Tensor& t) {
  return t.contiguous().view({-1, t.size(-1)});
}

// Back from rows to the caller's layout: [T, B, features] for a padded batch, rows when packed. The
// empty [0] that inference returns for what it did not keep stays as it is.
at::Tensor as_sequence(const LayerSizes& sizes, const at::Tensor& rows) {
  const bool kept_nothing = rows.dim() == 1;
  return sizes.packed || kept_nothing ? rows : rows.view(sizes.sequence_shape(rows.size(-1)));
}

}  // namespace

LayerForwardTuple run_layer_forward(const char* op, const PointwiseSteps& steps, const at::Tensor& input,
                                    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                                    const std::optional<at::Tensor>& bias_hh, const at::Tensor& h0,
                                    const at::Tensor& c0, bool reverse, bool training) {
  const at::Tensor b_ih = bias_ih.value_or(at::Tensor());
  const at::Tensor b_hh = bias_hh.value_or(at::Tensor());
  const LayerSizes sizes =
      check_layer_forward_args(op, input, batch_sizes.value_or(at::Tensor()), weight_ih, weight_hh, b_ih, b_hh, h0, c0);
  auto r = lstm_layer_forward(steps, sizes.layout, as_rows(input), weight_ih.contiguous(), weight_hh.contiguous(),
                              b_ih.defined() ? b_ih.contiguous() : b_ih, b_hh.defined() ? b_hh.contiguous() : b_hh,
                              h0.contiguous(), c0.contiguous(), reverse, training);
  return {as_sequence(sizes, r.output), r.h_n, r.c_n, as_sequence(sizes, r.gates), as_sequence(sizes, r.cells)};
}

LayerBackwardTuple run_layer_backward(const char* op, const PointwiseSteps& steps, const at::Tensor& grad_output,
                                      const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                      const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& output, const at::Tensor& gates,
                                      const at::Tensor& cells, bool reverse, bool has_bias) {
  const LayerSizes sizes = check_layer_backward_args(op, grad_output, grad_h_n, grad_c_n, input,
                                                     batch_sizes.value_or(at::Tensor()), weight_ih, weight_hh, h0,
                                                     c0, output, gates, cells);
  auto r = lstm_layer_backward(steps, sizes.layout, as_rows(grad_output), grad_h_n, grad_c_n, as_rows(input),
                               weight_ih.contiguous(), weight_hh.contiguous(), h0.contiguous(), c0.contiguous(),
                               as_rows(output), as_rows(gates), as_rows(cells), reverse, has_bias);
  return {as_sequence(sizes, r.grad_input), r.grad_weight_ih, r.grad_weight_hh, r.grad_bias, r.grad_h0, r.grad_c0};
}

}  // namespace lstm_ext
