// cpu_backend_avx512.cpp -- the CPU step kernels built for AVX-512 (F, DQ, BW, VL, as ATen's own
// AVX512 kernels): at::vec runs 16 floats per instruction, and panel_gemm's blocks use 32 vector
// registers (6 rows by two 32-column panels). Used only where ATen itself runs its AVX512 kernels
// (cpu_backend.cpp asks at run time), so ATEN_CPU_CAPABILITY=avx2 selects the AVX2 build here too.
//
// Built as cpu_backend_avx2.cpp is (see its comment), with -mavx512f -mavx512dq -mavx512bw -mavx512vl
// -mavx2 -mfma: everything it defines but lstm_ext::avx512::step_kernels() is local to it.
#if !defined(__AVX512F__) || !defined(__AVX512DQ__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__AVX2__) || !defined(__FMA__)
#error "cpu_backend_avx512.cpp is built by lstm_ext/_build.py (ISA_VARIANTS) with the AVX-512 flags, not as a plain source"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define LSTM_EXT_CPU_VARIANT avx512
#include "cpu_backend.h"
