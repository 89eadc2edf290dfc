// step_kernels.cpp -- the default per-step matrix product: ATen's (MKL/oneDNN on the CPU, cuBLAS on the
// current stream on CUDA).
#include "step_kernels.h"

#include <ATen/ATen.h>

namespace lstm_ext {

void StepKernels::matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose_weight,
                         bool accumulate) const {
  const at::Tensor b = transpose_weight ? weight.t() : weight;
  at::Tensor result = out;
  if (accumulate) {
    result.addmm_(a, b);
  } else {
    at::mm_out(result, a, b);
  }
}

}  // namespace lstm_ext
