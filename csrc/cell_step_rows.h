// cell_step_rows.h -- row 0 of a variant step (cell_rows::ForwardRow / BackwardRow) from the step's
// blocks and the cell's parameters, for every backend that runs lstm_cell_rows.h: the CPU and the CUDA
// launch (real and emulated). Row r is then cell_rows::forward_row_at / backward_row_at.
#pragma once

#include <ATen/OpMathType.h>

#include "lstm_cell_rows.h"
#include "step_kernels.h"

namespace lstm_ext {

template <typename S>
S* data_or_null(const RowBlock& block) {
  return block.data == nullptr ? nullptr : block.ptr<S>();
}

template <typename S>
const S* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<S>() : nullptr;
}

// The parameters and options every row of a step shares.
template <typename Row>
void set_cell_params(Row& r, const CellParams& cell) {
  using S = std::remove_const_t<std::remove_pointer_t<decltype(r.peephole)>>;
  using A = decltype(r.zoneout_cell);
  r.peephole = data_or_null<S>(cell.weight_peephole);
  r.layer_norm_weight_hh = data_or_null<S>(cell.layer_norm_weight_hh);
  r.layer_norm_weight_c = data_or_null<S>(cell.layer_norm_weight_c);
  r.layer_norm_bias_c = data_or_null<S>(cell.layer_norm_bias_c);
  r.zoneout_cell = static_cast<A>(cell.zoneout_cell);
  r.zoneout_hidden = static_cast<A>(cell.zoneout_hidden);
  r.zoneout_cell_on = cell.zoneout_cell_mask.defined() || cell.zoneout_cell != 0;
  r.zoneout_hidden_on = cell.zoneout_hidden_active();
}

template <typename S>
cell_rows::ForwardRow<S, at::opmath_type<S>> first_forward_row(const ForwardStepArgs& args) {
  cell_rows::ForwardRow<S, at::opmath_type<S>> first{};
  first.H = args.c.cols;
  set_cell_params(first, *args.cell);
  first.gates = data_or_null<S>(args.gates);
  first.recurrent = data_or_null<S>(args.recurrent);
  first.stats = data_or_null<S>(args.stats);
  first.c_prev = data_or_null<S>(args.c_prev);
  first.c = data_or_null<S>(args.c);
  first.h = data_or_null<S>(args.h);
  first.h_prev = data_or_null<S>(args.h_prev);
  first.zoneout_cell_mask = data_or_null<S>(args.zoneout_cell_mask);
  first.zoneout_hidden_mask = data_or_null<S>(args.zoneout_hidden_mask);
  first.keep_gates = args.keep_gates;
  return first;
}

template <typename S>
cell_rows::BackwardRow<S, at::opmath_type<S>> first_backward_row(const BackwardStepArgs& args) {
  cell_rows::BackwardRow<S, at::opmath_type<S>> first{};
  first.H = args.c.cols;
  set_cell_params(first, *args.cell);
  first.gates = data_or_null<S>(args.gates);
  first.c = data_or_null<S>(args.c);
  first.c_prev = data_or_null<S>(args.c_prev);
  first.grad_h_out = data_or_null<S>(args.grad_h_out);
  first.grad_h_next = data_or_null<S>(args.grad_h_next);
  first.recurrent_mask = data_or_null<S>(args.recurrent_mask);
  first.carry = data_or_null<S>(args.carry);
  first.grad_c = data_or_null<S>(args.grad_c);
  first.grad_cells = data_or_null<S>(args.grad_cells);
  first.grad_gates = data_or_null<S>(args.grad_gates);
  first.grad_recurrent = data_or_null<S>(args.grad_recurrent);
  first.grad_params = data_or_null<S>(args.grad_params);
  first.grad_params_width = args.grad_params.cols;
  first.peephole_terms = args.peephole_terms;
  first.layer_norm_c_terms = args.layer_norm_c_terms;
  first.normalized_recurrent = data_or_null<S>(args.normalized_recurrent);
  first.stats = data_or_null<S>(args.stats);
  first.zoneout_cell_mask = data_or_null<S>(args.zoneout_cell_mask);
  first.zoneout_hidden_mask = data_or_null<S>(args.zoneout_hidden_mask);
  return first;
}

}  // namespace lstm_ext
