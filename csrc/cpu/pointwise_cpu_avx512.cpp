// pointwise_cpu_avx512.cpp -- the CPU step kernels built for AVX-512 (F, DQ, BW, VL, as ATen's own
// AVX512 kernels): at::vec runs 16 floats per instruction, and panel_gemm's blocks use 32 vector
// registers (6 rows by two 32-column panels). Used only where ATen itself runs its AVX512 kernels
// (pointwise_cpu.cpp asks at run time), so ATEN_CPU_CAPABILITY=avx2 selects the AVX2 build here too.
//
// As in pointwise_cpu_avx2.cpp, the instruction set is set by a pragma, not on the command line, and
// this file comes after the baseline files in the link order (see that file's comment), and after the
// AVX2 one: an inline function shared by the two vector builds only keeps the AVX2 copy.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "avx2_macros.h"
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#define LSTM_EXT_CPU_VARIANT avx512
#include "pointwise_cpu_kernels.h"
#pragma GCC pop_options
#else
// Not x86-64: never chosen there (pointwise_cpu.cpp); this keeps the symbol.
#define LSTM_EXT_CPU_VARIANT avx512
#include "pointwise_cpu_kernels.h"
#endif
