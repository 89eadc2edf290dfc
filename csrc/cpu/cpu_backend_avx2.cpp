// cpu_backend_avx2.cpp -- the CPU pointwise step built for AVX2+FMA, so at::vec runs 8 floats (4
// doubles) per instruction and exp/tanh come from Sleef's vector functions in libtorch. Used only when
// the CPU has AVX2 and FMA (cpu_backend.cpp checks at run time).
//
// Not a plain source: lstm_ext/_build.py (ISA_VARIANTS) compiles it on its own with -mavx2 -mfma, then
// renames every symbol it defines and makes it local, but lstm_ext::avx2::step_kernels(). The inline
// functions of ATen, c10 and std that it emits, compiled for AVX2, stay its own copies: the baseline
// code never calls them, whatever the link order (tests/test_isa_isolation.py, .ci/isa_check.sh).
#if !defined(__AVX2__) || !defined(__FMA__)
#error "cpu_backend_avx2.cpp is built by lstm_ext/_build.py (ISA_VARIANTS) with -mavx2 -mfma, not as a plain source"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define LSTM_EXT_CPU_VARIANT avx2
#include "cpu_backend.h"
