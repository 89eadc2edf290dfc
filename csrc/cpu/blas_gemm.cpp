// blas_gemm.cpp -- see blas_gemm.h.
#include "blas_gemm.h"

#include <dlfcn.h>

#include <algorithm>
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
bool gemm(GemmFn<T> fn, const RowBlock& out, const RowBlock& a, const StepWeight& step_weight, bool accumulate,
          IndexRange columns) {
  const at::Tensor& weight = step_weight.weight;
  const bool transpose_weight = step_weight.transpose;
  const int64_t m = out.rows, k = a.cols, n = columns.size();
  if (fn == nullptr || m > INT_MAX || n > INT_MAX || k > INT_MAX || weight.numel() > INT_MAX) {
    return false;
  }
  if (m == 0 || n == 0) {
    return true;
  }
  // Row-major out[m, n] = a[m, k] @ op(W) is column-major out^T[n, m] = op(W)^T[n, k] @ a^T[k, m]. W
  // row-major is W^T column-major: weight [n, k] (op = transpose) is read with 'T', weight [k, n] with 'N'.
  // The columns of op(W) start at row columns.begin of W (op = transpose), else at its column columns.begin.
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ldw = static_cast<int>(weight.size(1)), lda = ik, ldc = static_cast<int>(out.cols);
  const T* w = weight.const_data_ptr<T>() + (transpose_weight ? columns.begin * ldw : columns.begin);
  T* c = out.ptr<T>() + columns.begin;
  const T one = 1, beta = accumulate ? 1 : 0;
  const char trans_w = transpose_weight ? 'T' : 'N', no_trans = 'N';
  if (k == 0) {  // BLAS leaves C untouched with k = 0 only when beta = 1
    if (!accumulate) {
      for (int64_t row = 0; row < m; ++row) {
        std::fill_n(c + row * ldc, n, T(0));
      }
    }
    return true;
  }
  fn(&trans_w, &no_trans, &in, &im, &ik, &one, w, &ldw, a.ptr<T>(), &lda, &beta, c, &ldc);
  return true;
}

}  // namespace

bool blas_gemm(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate,
               IndexRange columns) {
  switch (weight.weight.scalar_type()) {
    case at::kFloat:
      return gemm<float>(blas().sgemm, out, a, weight, accumulate, columns);
    case at::kDouble:
      return gemm<double>(blas().dgemm, out, a, weight, accumulate, columns);
    default:
      return false;
  }
}

}  // namespace lstm_ext
