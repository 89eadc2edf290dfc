// step_kernels.cpp -- the default per-step and weight-gradient matrix products (ATen's: MKL/oneDNN on the
// CPU, cuBLAS on the current stream on CUDA) and the default single share of the work.
#include "step_kernels.h"

#include <ATen/ATen.h>

#include "lstm_math.h"

namespace lstm_ext {

RowBlock row_block(const at::Tensor& t) {
  if (!t.defined() || (t.dim() != 2 && t.numel() == 0)) {
    return {};
  }
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && t.is_contiguous(), "row_block: expected a contiguous matrix, got sizes ",
                        t.sizes(), " and strides ", t.strides());
  return {static_cast<char*>(t.data_ptr()), t.size(0), t.size(1), static_cast<int64_t>(t.element_size())};
}

at::Tensor as_tensor(const RowBlock& block, const at::TensorOptions& options) {
  return at::from_blob(block.data, {block.rows, block.cols}, options);
}

at::Tensor StepKernels::empty(at::IntArrayRef sizes, const at::TensorOptions& options) const {
  return at::empty(sizes, options);
}

StepWeight StepKernels::prepare_weight(const at::Tensor& weight, bool transpose, WeightUse /*use*/) const {
  return StepWeight{weight, transpose, at::Tensor()};
}

StepBias StepKernels::prepare_bias(const at::Tensor& bias_ih, const at::Tensor& bias_hh) const {
  return bias_ih.defined() ? StepBias{bias_ih + bias_hh, at::Tensor(), at::Tensor()} : StepBias{};
}

void StepKernels::copy_rows(const RowBlock& to, const RowBlock& from, const at::TensorOptions& options) const {
  if (to.rows > 0 && to.cols > 0) {
    as_tensor(to, options).copy_(as_tensor(from, options));
  }
}

void StepKernels::matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate,
                         IndexRange columns) const {
  if (out.rows == 0 || columns.size() == 0) {
    return;
  }
  const auto options = weight.weight.options();
  // The blocks alias buffers the op owns; a weight that requires grad would make ATen's autograd
  // refuse an out= product, and no gradient flows through here anyway (the op has its own backward).
  const at::Tensor w = weight.weight.detach();
  const at::Tensor b = (weight.transpose ? w.t() : w).narrow(1, columns.begin, columns.size());
  at::Tensor result = as_tensor(out, options).narrow(1, columns.begin, columns.size());
  const at::Tensor lhs = a.cols == 0 ? at::empty({out.rows, 0}, options) : as_tensor(a, options);
  if (accumulate) {
    result.addmm_(lhs, b);
  } else {
    at::mm_out(result, lhs, b);
  }
}

void StepKernels::project(const RowBlock& out, const RowBlock& a, const StepWeight& weight, const StepBias& step_bias,
                          IndexRange columns) const {
  // A backend's parts (see StepBias) summed here where its own path does not take them.
  const at::Tensor bias =
      step_bias.sum.defined() || !step_bias.ih.defined() ? step_bias.sum : step_bias.ih + step_bias.hh;
  if (bias.defined() && out.rows > 0) {
    as_tensor(out, bias.options())
        .narrow(1, columns.begin, columns.size())
        .copy_(bias.narrow(0, columns.begin, columns.size()).expand({out.rows, columns.size()}));
  }
  matmul(out, a, weight, /*accumulate=*/bias.defined(), columns);
}

void StepKernels::weight_gradients(const std::vector<TransposedProduct>& products, const at::Tensor& column_sums,
                                   const at::Tensor& summed) const {
  for (const TransposedProduct& product : products) {
    at::Tensor out = product.out;  // addmm_ and mm_out take a mutable reference
    if (product.accumulate) {
      out.addmm_(product.a.t(), product.b);
    } else {
      at::mm_out(out, product.a.t(), product.b);
    }
  }
  if (column_sums.defined()) {
    at::Tensor sums = column_sums;
    at::sum_out(sums, summed, 0);
  }
}

void StepKernels::for_each_work_share(int64_t batch, int64_t hidden, bool /*may_split_units*/,
                                      const WorkShareFn& fn) const {
  fn(WorkShare{BatchChunk{0, batch}, IndexRange{0, hidden}});
}

InferenceProjection StepKernels::plan_inference_projection(int64_t /*batch*/, int64_t steps, int64_t /*input_size*/,
                                                           int64_t /*gate_width*/, int64_t /*element_size*/) const {
  return InferenceProjection{false, std::max<int64_t>(steps, 1)};
}

void StepKernels::multiply_rows(const RowBlock& out, const RowBlock& a, const RowBlock& mask,
                                const at::TensorOptions& options) const {
  if (out.rows > 0 && out.cols > 0) {
    at::Tensor result = as_tensor(out, options);
    at::mul_out(result, as_tensor(a, options), as_tensor(mask, options));
  }
}

void StepKernels::normalize_input(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                                  const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                  const at::TensorOptions& options) const {
  if (gates.rows == 0) {
    return;
  }
  at::Tensor gates_tensor = as_tensor(gates, options);
  auto [x_hat, mean, rstd] =
      at::native_layer_norm(gates_tensor, {gates.cols}, std::nullopt, std::nullopt, math::kLayerNormEps);
  as_tensor(normalized, options).copy_(x_hat);
  as_tensor(stats, options).select(1, 0).copy_(rstd.view({-1}));
  if (bias_ih.defined()) {
    at::addcmul_out(gates_tensor, bias_ih + bias_hh, x_hat, weight);
  } else {
    at::mul_out(gates_tensor, x_hat, weight);
  }
}

InputNormGrads StepKernels::normalize_input_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                                     const at::Tensor& row_stats, const at::Tensor& weight) const {
  const at::Tensor x_hat = normalized.select(0, 0);
  const at::Tensor grad_x_hat = grad_gates * weight;
  const at::Tensor rstd = row_stats.select(1, 0).unsqueeze(1);
  InputNormGrads grads;
  grads.grad_product =
      (rstd * (grad_x_hat - grad_x_hat.mean(1, true) - x_hat * (grad_x_hat * x_hat).mean(1, true))).contiguous();
  grads.grad_weight_ih = (grad_gates * x_hat).sum(0);
  grads.grad_weight_hh = (grad_gates * normalized.select(0, 1)).sum(0);
  return grads;
}

bool StepKernels::forward_loop(const ForwardLoopArgs& /*args*/) const {
  return false;
}

bool StepKernels::backward_loop(const BackwardLoopArgs& /*args*/) const {
  return false;
}

}  // namespace lstm_ext
