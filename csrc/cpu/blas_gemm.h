// blas_gemm.h -- the per-step matrix product on the CPU as one direct BLAS call: at small sizes ATen's
// addmm costs several times the product itself (dispatch, checks, views), and the loops make one per
// step. The BLAS is the one torch itself links (MKL in the x86 wheels), found at run time.
#pragma once

#include <ATen/core/Tensor.h>

#include "../step_kernels.h"

namespace lstm_ext {

// Columns `columns` of out = a @ op(weight) (+ out when accumulate), op(weight) = weight^T when
// weight.transpose; all float or all double. Returns false, doing nothing, when no BLAS was found or the
// sizes do not fit its 32-bit integers: the caller falls back to ATen.
bool blas_gemm(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate,
               IndexRange columns);

}  // namespace lstm_ext
