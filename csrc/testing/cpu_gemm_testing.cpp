// cpu_gemm_testing.cpp -- the CPU backend's matrix products (cpu/panel_gemm.h, cpu/weight_grad_gemm.h and
// their BLAS/ATen fallbacks) as test ops, through StepKernels' public interface (step_kernels.h), so that
// tests/test_cpu_gemm.py checks them against torch.mm on their own, not only inside whole LSTMs. Each op
// runs the instruction-set build that cpu_step_kernels() chose for the process.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../step_kernels.h"

namespace lstm_ext {
namespace {

void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == 2, name, ": expected a matrix, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous matrix, got strides ", t.strides());
}

void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& reference) {
  TORCH_CHECK(t.scalar_type() == reference.scalar_type(), name, ": expected dtype ", reference.scalar_type(),
              " (weight's), got ", t.scalar_type());
}

// Which of prepare_weight's forms `weight` took: "packed" (panels copied), "in_place" (op(W) = W read as
// panels where it lies), "transposed_in_place" (op(W) = W^T, W's tiles transposed as they are read), or
// "unpacked" (no panel product: BLAS or ATen).
std::string weight_form(const StepWeight& weight) {
  if (!weight.packed.defined()) {
    return "unpacked";
  }
  if (weight.packed.is_same(weight.weight)) {
    return weight.transpose ? "transposed_in_place" : "in_place";
  }
  return "packed";
}

// The checks shared by matmul and project: out [m, n] = a [m, k] @ op(weight), op(weight) [k, n]; the
// prepared weight's promised use covers this product; columns [column_begin, column_end) of out.
StepWeight prepare_checked(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose,
                           int64_t use_rows, int64_t use_products, int64_t column_begin, int64_t column_end) {
  check_matrix(out, "out");
  check_matrix(a, "a");
  check_matrix(weight, "weight");
  check_same_dtype(out, "out", weight);
  check_same_dtype(a, "a", weight);
  const int64_t k = transpose ? weight.size(1) : weight.size(0), n = transpose ? weight.size(0) : weight.size(1);
  TORCH_CHECK(a.size(1) == k, "a: expected ", k, " columns (op(weight) has ", k, " rows), got ", a.size(1));
  TORCH_CHECK(out.size(0) == a.size(0) && out.size(1) == n, "out: expected sizes [", a.size(0), ", ", n, "], got ",
              out.sizes());
  TORCH_CHECK(use_products >= 1 && use_rows >= a.size(0), "use_rows, use_products: expected a use of at least one ",
              "product of at least a's ", a.size(0), " rows, got ", use_products, " products of ", use_rows, " rows");
  TORCH_CHECK(0 <= column_begin && column_begin <= column_end && column_end <= n,
              "column_begin, column_end: expected 0 <= begin <= end <= ", n, ", got [", column_begin, ", ",
              column_end, ")");
  return cpu_step_kernels().prepare_weight(weight, transpose, WeightUse{use_rows, use_products});
}

// Columns [column_begin, column_end) of out = a @ op(weight) (+ out where accumulate), through
// prepare_weight(weight, transpose, WeightUse{use_rows, use_products}) and matmul. Returns the weight's form.
std::string cpu_gemm_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose,
                            int64_t use_rows, int64_t use_products, bool accumulate, int64_t column_begin,
                            int64_t column_end) {
  const StepWeight prepared =
      prepare_checked(out, a, weight, transpose, use_rows, use_products, column_begin, column_end);
  cpu_step_kernels().matmul(row_block(out), row_block(a), prepared, accumulate, IndexRange{column_begin, column_end});
  return weight_form(prepared);
}

// Columns [column_begin, column_end) of out = (bias_ih + bias_hh) + a @ op(weight), through prepare_bias
// and project (no biases: no bias). Returns the weight's form.
std::string cpu_gemm_project(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose,
                             int64_t use_rows, int64_t use_products, const std::optional<at::Tensor>& bias_ih,
                             const std::optional<at::Tensor>& bias_hh, int64_t column_begin, int64_t column_end) {
  const StepWeight prepared =
      prepare_checked(out, a, weight, transpose, use_rows, use_products, column_begin, column_end);
  TORCH_CHECK(bias_ih.has_value() == bias_hh.has_value(), "bias_ih, bias_hh: expected both or neither, got ",
              bias_ih.has_value() ? "bias_ih only" : "bias_hh only");
  at::Tensor ih, hh;
  if (bias_ih.has_value()) {
    ih = *bias_ih;
    hh = *bias_hh;
    for (const auto& [bias, name] : {std::pair{ih, "bias_ih"}, std::pair{hh, "bias_hh"}}) {
      TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out.size(1) && bias.is_contiguous() && bias.device().is_cpu(),
                  name, ": expected a contiguous CPU vector of ", out.size(1), " (out's columns), got sizes ",
                  bias.sizes(), " and strides ", bias.strides());
      check_same_dtype(bias, name, weight);
    }
  }
  const StepBias step_bias = cpu_step_kernels().prepare_bias(ih, hh);
  cpu_step_kernels().project(row_block(out), row_block(a), prepared, step_bias, IndexRange{column_begin, column_end});
  return weight_form(prepared);
}

// weight_gradients: outs[i] (+)= a[i]^T @ b[i] (accumulate[i]) in order, and where column_sums is given,
// column_sums = summed's column sums. Every out [m, *] and a [*, m] with m = summed's columns.
void cpu_gemm_weight_gradients(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& a,
                               const std::vector<at::Tensor>& b, c10::List<bool> accumulate,
                               const std::optional<at::Tensor>& column_sums, const at::Tensor& summed) {
  check_matrix(summed, "summed");
  const int64_t m = summed.size(1);
  const size_t count = outs.size();
  TORCH_CHECK(a.size() == count && b.size() == count && accumulate.size() == count,
              "outs, a, b, accumulate: expected lists of one length, got ", count, ", ", a.size(), ", ", b.size(),
              ", ", accumulate.size());
  std::vector<TransposedProduct> products;
  for (size_t i = 0; i < count; ++i) {
    check_matrix(outs[i], "outs[i]");
    check_matrix(a[i], "a[i]");
    check_matrix(b[i], "b[i]");
    check_same_dtype(outs[i], "outs[i]", summed);
    check_same_dtype(a[i], "a[i]", summed);
    check_same_dtype(b[i], "b[i]", summed);
    TORCH_CHECK(a[i].size(1) == m && b[i].size(0) == a[i].size(0), "a[", i, "], b[", i, "]: expected [k, ", m,
                "] and [k, n], got ", a[i].sizes(), " and ", b[i].sizes());
    TORCH_CHECK(outs[i].size(0) == m && outs[i].size(1) == b[i].size(1), "outs[", i, "]: expected sizes [", m, ", ",
                b[i].size(1), "], got ", outs[i].sizes());
    products.push_back({outs[i], a[i], b[i], accumulate.get(i)});
  }
  at::Tensor sums;
  if (column_sums.has_value()) {
    sums = *column_sums;
    TORCH_CHECK(sums.dim() == 1 && sums.size(0) == m && sums.is_contiguous(), "column_sums: expected a contiguous ",
                "vector of ", m, " (summed's columns), got sizes ", sums.sizes(), " and strides ", sums.strides());
    check_same_dtype(sums, "column_sums", summed);
  }
  cpu_step_kernels().weight_gradients(products, sums, summed);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_ext_testing, m) {
  m.def(
      "cpu_gemm_matmul(Tensor(a!) out, Tensor a, Tensor weight, bool transpose, int use_rows, int use_products, "
      "bool accumulate, int column_begin, int column_end) -> str");
  m.def(
      "cpu_gemm_project(Tensor(a!) out, Tensor a, Tensor weight, bool transpose, int use_rows, int use_products, "
      "Tensor? bias_ih, Tensor? bias_hh, int column_begin, int column_end) -> str");
  m.def(
      "cpu_gemm_weight_gradients(Tensor(a!)[] outs, Tensor[] a, Tensor[] b, bool[] accumulate, "
      "Tensor(b!)? column_sums, Tensor summed) -> ()");
}

TORCH_LIBRARY_IMPL(lstm_ext_testing, CPU, m) {
  m.impl("cpu_gemm_matmul", &cpu_gemm_matmul);
  m.impl("cpu_gemm_project", &cpu_gemm_project);
  m.impl("cpu_gemm_weight_gradients", &cpu_gemm_weight_gradients);
}

}  // namespace lstm_ext
