// layer_ops.cpp -- see layer_ops.h.
#include "layer_ops.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include "arg_checks.h"
#include "lstm_recurrence.h"

namespace lstm_ext {
namespace {

// A per-step tensor as contiguous rows [N, features] (an undefined one stays undefined).
at::Tensor as_rows(const at::Tensor& t) {
  return t.defined() ? t.contiguous().view({-1, t.size(-1)}) : t;
}

// Back from rows to the caller's layout: [T, B, features] for a padded batch, rows when packed. The
// empty [0] returned for what was not kept stays as it is.
at::Tensor as_sequence(const LayerSizes& sizes, const at::Tensor& rows) {
  const bool kept_nothing = rows.dim() == 1;
  return sizes.packed || kept_nothing ? rows : rows.view(sizes.sequence_shape(rows.size(-1)));
}

// The normalized products [2, N, 4H] in the caller's layout ([2, T, B, 4H] padded).
at::Tensor normalized_as_sequence(const LayerSizes& sizes, const at::Tensor& t) {
  if (sizes.packed || t.dim() == 1) {
    return t;
  }
  std::vector<int64_t> shape = sizes.sequence_shape(t.size(-1));
  shape.insert(shape.begin(), 2);
  return t.view(shape);
}

at::Tensor contiguous_or_undefined(const at::Tensor& t) {
  return t.defined() ? t.contiguous() : t;
}

LayerWeights layer_weights(const LayerForwardArgs& a) {
  return {a.weight_ih.contiguous(), a.weight_hh.contiguous(), contiguous_or_undefined(a.bias_ih),
          contiguous_or_undefined(a.bias_hh), contiguous_or_undefined(a.weight_hr)};
}

CellParams cell_params(const LayerForwardArgs& a) {
  CellParams cell;
  cell.weight_peephole = contiguous_or_undefined(a.weight_peephole);
  cell.layer_norm_weight_ih = contiguous_or_undefined(a.layer_norm_weight_ih);
  cell.layer_norm_weight_hh = contiguous_or_undefined(a.layer_norm_weight_hh);
  cell.layer_norm_weight_c = contiguous_or_undefined(a.layer_norm_weight_c);
  cell.layer_norm_bias_c = contiguous_or_undefined(a.layer_norm_bias_c);
  cell.recurrent_mask = contiguous_or_undefined(a.recurrent_mask);
  cell.zoneout_cell_mask = as_rows(a.zoneout_cell_mask);
  cell.zoneout_hidden_mask = as_rows(a.zoneout_hidden_mask);
  cell.zoneout_cell = a.zoneout_cell;
  cell.zoneout_hidden = a.zoneout_hidden;
  return cell;
}

LayerForwardProblem forward_problem(const LayerSizes& sizes, const LayerForwardArgs& a) {
  return LayerForwardProblem{&sizes.layout, as_rows(a.input), layer_weights(a), cell_params(a),
                             a.h0.contiguous(), a.c0.contiguous(), a.reverse, a.training};
}

}  // namespace

LayerForwardResults run_layer_forward(const char* op, const StepKernels& steps, const LayerForwardArgs& args) {
  // The reshapes below are plain aliases, as inside any ATen kernel: no autograd view tracking, which
  // costs more than a small call's arithmetic, and the outputs are fresh tensors, not views of buffers
  // the caller never sees.
  const c10::impl::ExcludeDispatchKeyGuard no_view_tracking(c10::DispatchKey::ADInplaceOrView);
  const LayerSizes sizes = check_layer_forward_args(op, args);
  const LayerForwardResult r = lstm_layer_forward(steps, forward_problem(sizes, args));
  return {as_sequence(sizes, r.output),
          r.h_n,
          r.c_n,
          as_sequence(sizes, r.gates),
          as_sequence(sizes, r.cells),
          normalized_as_sequence(sizes, r.normalized),
          as_sequence(sizes, r.row_stats),
          as_sequence(sizes, r.unprojected)};
}

LayerBackwardResults run_layer_backward(const char* op, const StepKernels& steps, const LayerBackwardArgs& args) {
  const c10::impl::ExcludeDispatchKeyGuard no_view_tracking(c10::DispatchKey::ADInplaceOrView);
  const LayerSizes sizes = check_layer_backward_args(op, args);
  LayerBackwardProblem problem{forward_problem(sizes, args.forward), {}, as_rows(args.grads.grad_output),
                               args.grads.grad_h_n, args.grads.grad_c_n, as_rows(args.grads.grad_cells),
                               args.need_grad_input};
  const LayerForwardResults& saved = args.saved;
  problem.saved.output = as_rows(saved.output);
  problem.saved.gates = as_rows(saved.gates);
  problem.saved.cells = as_rows(saved.cells);
  problem.saved.unprojected = args.forward.weight_hr.defined() ? as_rows(saved.unprojected) : at::Tensor();
  if (args.forward.layer_norm_weight_hh.defined()) {
    problem.saved.normalized = saved.normalized.contiguous().view({2, sizes.layout.rows, 4 * sizes.H});
    problem.saved.row_stats = as_rows(saved.row_stats);
  }
  const LayerBackwardResult r = lstm_layer_backward(steps, problem);
  return {as_sequence(sizes, r.grad_input),
          r.grad_weight_ih,
          r.grad_weight_hh,
          r.grad_bias,
          r.grad_weight_hr,
          r.grad_h0,
          r.grad_c0,
          r.grad_weight_peephole,
          r.grad_layer_norm_weight_ih,
          r.grad_layer_norm_weight_hh,
          r.grad_layer_norm_weight_c,
          r.grad_layer_norm_bias_c};
}

}  // namespace lstm_ext
