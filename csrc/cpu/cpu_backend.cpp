// cpu_backend.cpp -- the CPU step kernels for the baseline instruction set, and the run-time choice
// between them and the AVX2 and AVX-512 builds (cpu_backend_avx2.cpp, cpu_backend_avx512.cpp).
#define LSTM_EXT_CPU_VARIANT baseline
#include "cpu_backend.h"

#include <ATen/Version.h>

#include <string>

// The vector builds exist on x86-64 Linux only: as lstm_ext/_build.py's isa_variants_built().
#if defined(__x86_64__) && defined(__linux__)
#define LSTM_EXT_CPU_ISA_VARIANTS 1
#endif

namespace lstm_ext {
#ifdef LSTM_EXT_CPU_ISA_VARIANTS
namespace avx2 {
const StepKernels& step_kernels();
}  // namespace avx2
namespace avx512 {
const StepKernels& step_kernels();
}  // namespace avx512
#endif

namespace {

struct CpuVariant {
  const char* name;
  const StepKernels& kernels;
};

// The widest build that both the CPU and ATen's own choice allow: ATen picks its kernels' instruction
// set once (the CPU's best, capped by ATEN_CPU_CAPABILITY), and lstm_ext follows it, so that one
// setting runs every variant on one machine (tests/test_cpu_variants.py).
const CpuVariant& chosen_variant() {
  static const CpuVariant chosen = []() -> CpuVariant {
#ifdef LSTM_EXT_CPU_ISA_VARIANTS
    const std::string aten = at::get_cpu_capability();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (aten == "AVX512" && has_avx512) {
      return {"avx512", avx512::step_kernels()};
    }
    if ((aten == "AVX512" || aten == "AVX2") && has_avx2) {
      return {"avx2", avx2::step_kernels()};
    }
#endif
    return {"baseline", baseline::step_kernels()};
  }();
  return chosen;
}

}  // namespace

const StepKernels& cpu_step_kernels() {
  return chosen_variant().kernels;
}

const char* cpu_step_kernels_name() {
  return chosen_variant().name;
}

}  // namespace lstm_ext
