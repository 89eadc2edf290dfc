// pointwise_cpu.cpp -- the CPU pointwise step for the baseline instruction set, and the run-time choice
// between it and the AVX2 build (pointwise_cpu_avx2.cpp).
#define LSTM_EXT_CPU_VARIANT baseline
#include "pointwise_cpu_kernels.h"

namespace lstm_ext {
namespace avx2 {
const StepKernels& step_kernels();
}  // namespace avx2

const StepKernels& cpu_step_kernels() {
  static const bool use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return use_avx2 ? avx2::step_kernels() : baseline::step_kernels();
}

}  // namespace lstm_ext
