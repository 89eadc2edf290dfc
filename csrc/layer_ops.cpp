// layer_ops.cpp -- see layer_ops.h.
#include "layer_ops.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include "arg_checks.h"
#include "lstm_recurrence.h"

namespace lstm_ext {
namespace {

// A per-step tensor as contiguous rows [N, features].
at::Tensor as_rows(const at::Tensor& t) {
  return t.contiguous().view({-1, t.size(-1)});
}

// Back from rows to the caller's layout: [T, B, features] for a padded batch, rows when packed. The
// empty [0] returned for what was not kept stays as it is.
at::Tensor as_sequence(const LayerSizes& sizes, const at::Tensor& rows) {
  const bool kept_nothing = rows.dim() == 1;
  return sizes.packed || kept_nothing ? rows : rows.view(sizes.sequence_shape(rows.size(-1)));
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

}  // namespace

LayerForwardTuple run_layer_forward(const char* op, const StepKernels& steps, const at::Tensor& input,
                                    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                                    const std::optional<at::Tensor>& bias_hh,
                                    const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                    const at::Tensor& c0, bool reverse, bool training) {
  // The reshapes below are plain aliases, as inside any ATen kernel: no autograd view tracking, which
  // costs more than a small call's arithmetic, and the outputs are fresh tensors, not views of buffers
  // the caller never sees.
  const c10::impl::ExcludeDispatchKeyGuard no_view_tracking(c10::DispatchKey::ADInplaceOrView);
  const LayerSizes sizes = check_layer_forward_args(
      op, input, batch_sizes.value_or(at::Tensor()), weight_ih, weight_hh, bias_ih.value_or(at::Tensor()),
      bias_hh.value_or(at::Tensor()), weight_hr.value_or(at::Tensor()), h0, c0);
  const LayerWeights weights{weight_ih.contiguous(), weight_hh.contiguous(), contiguous_or_undefined(bias_ih),
                             contiguous_or_undefined(bias_hh), contiguous_or_undefined(weight_hr)};
  auto r = lstm_layer_forward(steps, sizes.layout, as_rows(input), weights, h0.contiguous(), c0.contiguous(),
                              reverse, training);
  return {as_sequence(sizes, r.output), r.h_n, r.c_n, as_sequence(sizes, r.gates), as_sequence(sizes, r.cells),
          as_sequence(sizes, r.unprojected)};
}

LayerBackwardTuple run_layer_backward(const char* op, const StepKernels& steps, const at::Tensor& grad_output,
                                      const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                      const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                      const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& output, const at::Tensor& gates,
                                      const at::Tensor& cells, const at::Tensor& unprojected, bool reverse,
                                      bool has_bias, bool need_grad_input) {
  const LayerSizes sizes = check_layer_backward_args(
      op, grad_output, grad_h_n, grad_c_n, input, batch_sizes.value_or(at::Tensor()), weight_ih, weight_hh,
      weight_hr.value_or(at::Tensor()), h0, c0, output, gates, cells, unprojected);
  const LayerWeights weights{weight_ih.contiguous(), weight_hh.contiguous(), at::Tensor(), at::Tensor(),
                             contiguous_or_undefined(weight_hr)};
  const LayerSaved saved{as_rows(output), as_rows(gates), as_rows(cells),
                         weights.weight_hr.defined() ? as_rows(unprojected) : at::Tensor()};
  auto r = lstm_layer_backward(steps, sizes.layout, as_rows(grad_output), grad_h_n, grad_c_n, as_rows(input),
                               weights, h0.contiguous(), c0.contiguous(), saved, reverse, has_bias,
                               need_grad_input);
  return {as_sequence(sizes, r.grad_input), r.grad_weight_ih, r.grad_weight_hh, r.grad_bias, r.grad_weight_hr,
          r.grad_h0, r.grad_c0};
}

}  // namespace lstm_ext
