// arg_checks.cpp -- see arg_checks.h.
#include "arg_checks.h"

#include <c10/util/Exception.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace lstm_ext {
namespace {

bool dtype_supported(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
    case at::kDouble:
    case at::kBFloat16:
      return true;
    case at::kHalf:
      return t.is_cuda();
    default:
      return false;
  }
}

void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
}

// `expected` by reference, not a vector: the checks run on every call, and a heap copy each costs more
// than the check.
void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected,
                 const char* meaning) {
  check_defined(op, name, t);
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", meaning, " = ", expected, ", got ",
              t.sizes());
}

// Every tensor of an op shares the dtype and device of `input`.
void check_like_input(const char* op, const at::Tensor& input, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have the dtype of input (",
              input.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the device of input (",
              input.device(), "), got ", t.device());
}

}  // namespace

std::vector<int64_t> LayerSizes::sequence_shape(int64_t features) const {
  if (packed) {
    return {layout.rows, features};
  }
  return {layout.steps(), layout.batch, features};
}

namespace {

// The cell's arguments (lstm_cell.h) against the layer's sizes.
void check_cell_args(const char* op, const LayerSizes& s, const LayerForwardArgs& a) {
  const at::Tensor& input = a.input;
  if (a.weight_peephole.defined()) {
    check_shape(op, "weight_peephole", a.weight_peephole, {3 * s.H}, "[3*hidden_size]");
  }
  const int64_t given = int64_t{a.layer_norm_weight_ih.defined()} + a.layer_norm_weight_hh.defined() +
                        a.layer_norm_weight_c.defined() + a.layer_norm_bias_c.defined();
  TORCH_CHECK(given == 0 || given == 4, op,
              ": layer_norm_weight_ih, layer_norm_weight_hh, layer_norm_weight_c and layer_norm_bias_c must all be "
              "given or all be None, got ", given, " of them");
  if (given == 4) {
    check_shape(op, "layer_norm_weight_ih", a.layer_norm_weight_ih, {4 * s.H}, "[4*hidden_size]");
    check_shape(op, "layer_norm_weight_hh", a.layer_norm_weight_hh, {4 * s.H}, "[4*hidden_size]");
    check_shape(op, "layer_norm_weight_c", a.layer_norm_weight_c, {s.H}, "[hidden_size]");
    check_shape(op, "layer_norm_bias_c", a.layer_norm_bias_c, {s.H}, "[hidden_size]");
  }
  if (a.recurrent_mask.defined()) {
    check_shape(op, "recurrent_mask", a.recurrent_mask, {s.layout.batch, s.P},
                a.weight_hr.defined() ? "[batch, proj_size]" : "[batch, hidden_size]");
  }
  const char* per_step_c = s.packed ? "[rows, hidden_size]" : "[seq_len, batch, hidden_size]";
  for (const auto& [name, mask, rate] :
       {std::tuple<const char*, const at::Tensor&, double>{"zoneout_cell", a.zoneout_cell_mask, a.zoneout_cell},
        {"zoneout_hidden", a.zoneout_hidden_mask, a.zoneout_hidden}}) {
    TORCH_CHECK(rate >= 0 && rate <= 1, op, ": ", name, " must be a rate in [0, 1], got ", rate);
    if (mask.defined()) {
      check_shape(op, name == std::string("zoneout_cell") ? "zoneout_cell_mask" : "zoneout_hidden_mask", mask,
                  s.sequence_shape(s.H), per_step_c);
    }
    TORCH_CHECK_NOT_IMPLEMENTED(!(a.weight_hr.defined() && (mask.defined() || rate != 0)), op, ": ", name,
                " with weight_hr (proj_size > 0) is not implemented");
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weight_peephole", a.weight_peephole},
                                {"layer_norm_weight_ih", a.layer_norm_weight_ih},
                                {"layer_norm_weight_hh", a.layer_norm_weight_hh},
                                {"layer_norm_weight_c", a.layer_norm_weight_c},
                                {"layer_norm_bias_c", a.layer_norm_bias_c}, {"recurrent_mask", a.recurrent_mask},
                                {"zoneout_cell_mask", a.zoneout_cell_mask},
                                {"zoneout_hidden_mask", a.zoneout_hidden_mask}}) {
    if (t.defined()) {
      check_like_input(op, input, name, t);
    }
  }
}

}  // namespace

LayerSizes check_layer_forward_args(const char* op, const LayerForwardArgs& a) {
  const at::Tensor& input = a.input;
  const at::Tensor& batch_sizes = a.batch_sizes;
  const at::Tensor& weight_ih = a.weight_ih;
  const at::Tensor& weight_hh = a.weight_hh;
  const at::Tensor& bias_ih = a.bias_ih;
  const at::Tensor& bias_hh = a.bias_hh;
  const at::Tensor& weight_hr = a.weight_hr;
  const at::Tensor& h0 = a.h0;
  const at::Tensor& c0 = a.c0;
  check_defined(op, "input", input);
  LayerSizes s;
  s.packed = batch_sizes.defined();
  if (s.packed) {
    TORCH_CHECK(input.dim() == 2, op, ": with batch_sizes, input must be 2-D [rows, input_size] (packed), got ",
                input.dim(), "-D with shape ", input.sizes());
    s.layout = packed_layout(op, batch_sizes, input.size(0));
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D [seq_len, batch, input_size], got ", input.dim(),
                "-D with shape ", input.sizes());
    s.layout = padded_layout(input.size(0), input.size(1));
  }
  s.I = input.size(-1);
  TORCH_CHECK(dtype_supported(input), op, ": input must be float32, float64 or bfloat16",
              " (or float16 on CUDA), got ", input.scalar_type(), " on ", input.device());
  check_defined(op, "weight_hh", weight_hh);
  if (weight_hr.defined()) {
    TORCH_CHECK(weight_hr.dim() == 2, op, ": weight_hr must be 2-D [proj_size, hidden_size], got ", weight_hr.sizes());
    s.H = weight_hr.size(1);
    s.P = weight_hr.size(0);
    check_shape(op, "weight_hh", weight_hh, {4 * s.H, s.P}, "[4*hidden_size, proj_size]");
  } else {
    TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 4 * weight_hh.size(1), op,
                ": weight_hh must have shape [4*hidden_size, hidden_size], got ", weight_hh.sizes());
    s.H = s.P = weight_hh.size(1);
  }
  const int64_t B = s.layout.batch;

  check_shape(op, "weight_ih", weight_ih, {4 * s.H, s.I}, "[4*hidden_size, input_size]");
  TORCH_CHECK(bias_ih.defined() == bias_hh.defined(), op,
              ": bias_ih and bias_hh must both be given or both be None, got ",
              bias_ih.defined() ? "bias_ih only" : "bias_hh only");
  if (bias_ih.defined()) {
    check_shape(op, "bias_ih", bias_ih, {4 * s.H}, "[4*hidden_size]");
    check_shape(op, "bias_hh", bias_hh, {4 * s.H}, "[4*hidden_size]");
  }
  check_shape(op, "h0", h0, {B, s.P}, weight_hr.defined() ? "[batch, proj_size]" : "[batch, hidden_size]");
  check_shape(op, "c0", c0, {B, s.H}, "[batch, hidden_size]");

  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weight_ih", weight_ih},
                                {"weight_hh", weight_hh}, {"bias_ih", bias_ih}, {"bias_hh", bias_hh},
                                {"weight_hr", weight_hr}, {"h0", h0}, {"c0", c0}}) {
    if (t.defined()) {
      check_like_input(op, input, name, t);
    }
  }
  check_cell_args(op, s, a);
  return s;
}

LayerSizes check_layer_backward_args(const char* op, const LayerBackwardArgs& args) {
  const LayerSizes s = check_layer_forward_args(op, args.forward);
  const at::Tensor& input = args.forward.input;
  const at::Tensor& weight_hr = args.forward.weight_hr;
  const at::Tensor& grad_output = args.grads.grad_output;
  const at::Tensor& grad_h_n = args.grads.grad_h_n;
  const at::Tensor& grad_c_n = args.grads.grad_c_n;
  const at::Tensor& output = args.saved.output;
  const at::Tensor& gates = args.saved.gates;
  const at::Tensor& cells = args.saved.cells;
  const at::Tensor& unprojected = args.saved.unprojected;
  const int64_t B = s.layout.batch;
  const char* per_step_h = s.packed ? "[rows, hidden_size or proj_size]" : "[seq_len, batch, hidden_size or proj_size]";
  const char* per_step_c = s.packed ? "[rows, hidden_size]" : "[seq_len, batch, hidden_size]";
  check_shape(op, "grad_output", grad_output, s.sequence_shape(s.P), per_step_h);
  check_shape(op, "grad_h_n", grad_h_n, {B, s.P}, "[batch, hidden_size or proj_size]");
  check_shape(op, "grad_c_n", grad_c_n, {B, s.H}, "[batch, hidden_size]");
  check_shape(op, "output", output, s.sequence_shape(s.P), per_step_h);
  check_defined(op, "gates", gates);
  TORCH_CHECK(!(gates.numel() == 0 && s.layout.rows * s.H > 0), op,
              ": gates is empty: the forward ran with training=False and kept nothing for the backward");
  check_shape(op, "gates", gates, s.sequence_shape(4 * s.H),
              s.packed ? "[rows, 4*hidden_size]" : "[seq_len, batch, 4*hidden_size]");
  check_shape(op, "cells", cells, s.sequence_shape(s.H), per_step_c);
  if (weight_hr.defined()) {
    check_shape(op, "unprojected", unprojected, s.sequence_shape(s.H), per_step_c);
  }
  if (args.grads.grad_cells.defined()) {
    check_shape(op, "grad_cells", args.grads.grad_cells, s.sequence_shape(s.H), per_step_c);
  }
  if (args.forward.layer_norm_weight_hh.defined()) {
    std::vector<int64_t> normalized_shape = s.sequence_shape(4 * s.H);
    normalized_shape.insert(normalized_shape.begin(), 2);
    check_shape(op, "normalized", args.saved.normalized, normalized_shape,
                s.packed ? "[2, rows, 4*hidden_size]" : "[2, seq_len, batch, 4*hidden_size]");
    check_shape(op, "row_stats", args.saved.row_stats, s.sequence_shape(4), s.packed ? "[rows, 4]" : "[seq_len, batch, 4]");
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_output", grad_output},
                                {"grad_h_n", grad_h_n}, {"grad_c_n", grad_c_n}, {"grad_cells", args.grads.grad_cells},
                                {"output", output}, {"gates", gates}, {"cells", cells}, {"unprojected", unprojected},
                                {"normalized", args.saved.normalized}, {"row_stats", args.saved.row_stats}}) {
    if (t.defined()) {
      check_like_input(op, input, name, t);
    }
  }
  return s;
}

}  // namespace lstm_ext
