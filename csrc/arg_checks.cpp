// arg_checks.cpp -- see arg_checks.h.
#include "arg_checks.h"

#include <c10/util/Exception.h>

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

LayerSizes check_layer_forward_args(const char* op, const at::Tensor& input, const at::Tensor& batch_sizes,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& bias_ih, const at::Tensor& bias_hh, const at::Tensor& weight_hr,
                                    const at::Tensor& h0, const at::Tensor& c0) {
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
  return s;
}

LayerSizes check_layer_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                     const at::Tensor& grad_c_n, const at::Tensor& input,
                                     const at::Tensor& batch_sizes, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const at::Tensor& weight_hr, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& output, const at::Tensor& gates,
                                     const at::Tensor& cells, const at::Tensor& unprojected) {
  const LayerSizes s = check_layer_forward_args(op, input, batch_sizes, weight_ih, weight_hh, at::Tensor(),
                                                at::Tensor(), weight_hr, h0, c0);
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
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_output", grad_output},
                                {"grad_h_n", grad_h_n}, {"grad_c_n", grad_c_n}, {"output", output},
                                {"gates", gates}, {"cells", cells}, {"unprojected", unprojected}}) {
    if (t.defined()) {
      check_like_input(op, input, name, t);
    }
  }
  return s;
}

}  // namespace lstm_ext
