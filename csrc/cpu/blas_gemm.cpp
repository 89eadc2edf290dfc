// blas_gemm.cpp -- see blas_gemm.h.
#include "blas_gemm.h"

#include <dlfcn.h>

#include <climits>

namespace lstm_ext {
namespace {

template <typename T>
using GemmFn = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                        const T* alpha, const T* a, const int* lda, const T* b, const int* ldb, const T* beta, T* c,
                        const int* ldc);

struct Blas {
  GemmFn<float> sgemm = nullptr;
  GemmFn<double> dgemm = nullptr;
};

// The Fortran gemm of the BLAS inside libtorch_cpu, if it exports one.
const Blas& blas() {
  static const Blas found = [] {
    Blas b;
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (torch_cpu != nullptr) {
      b.sgemm = reinterpret_cast<GemmFn<float>>(dlsym(torch_cpu, "sgemm_"));
      b.dgemm = reinterpret_cast<GemmFn<double>>(dlsym(torch_cpu, "dgemm_"));
    }
    return b;
  }();
  return found;
}

template <typename T>
bool gemm(GemmFn<T> fn, const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose_weight,
          bool accumulate) {
  const int64_t m = a.size(0), k = a.size(1), n = out.size(1);
  if (fn == nullptr || m > INT_MAX || n > INT_MAX || k > INT_MAX || weight.numel() > INT_MAX) {
    return false;
  }
  if (m == 0 || n == 0) {
    return true;
  }
  // Row-major out[m, n] = a[m, k] @ op(W) is column-major out^T[n, m] = op(W)^T[n, k] @ a^T[k, m]. W
  // row-major is W^T column-major: weight [n, k] (op = transpose) is read with 'T', weight [k, n] with 'N'.
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ldw = static_cast<int>(weight.size(1)), lda = ik, ldc = in;
  const T one = 1, beta = accumulate ? 1 : 0;
  const char trans_w = transpose_weight ? 'T' : 'N', no_trans = 'N';
  if (k == 0) {  // BLAS leaves C untouched with k = 0 only when beta = 1
    if (!accumulate) {
      const_cast<at::Tensor&>(out).zero_();
    }
    return true;
  }
  fn(&trans_w, &no_trans, &in, &im, &ik, &one, weight.const_data_ptr<T>(), &ldw, a.const_data_ptr<T>(), &lda, &beta,
     out.mutable_data_ptr<T>(), &ldc);
  return true;
}

}  // namespace

bool blas_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& weight, bool transpose_weight,
               bool accumulate) {
  switch (out.scalar_type()) {
    case at::kFloat:
      return gemm<float>(blas().sgemm, out, a, weight, transpose_weight, accumulate);
    case at::kDouble:
      return gemm<double>(blas().dgemm, out, a, weight, transpose_weight, accumulate);
    default:
      return false;
  }
}

}  // namespace lstm_ext
