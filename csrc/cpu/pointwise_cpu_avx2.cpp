// pointwise_cpu_avx2.cpp -- the CPU pointwise step built for AVX2+FMA, so at::vec runs 8 floats (4
// doubles) per instruction and exp/tanh come from Sleef's vector functions in libtorch. Used only when
// the CPU has AVX2 and FMA (pointwise_cpu.cpp checks at run time).
//
// The instruction set is set here, not on the command line, so the rest of the extension stays
// baseline: the pragma applies to everything below it, and the __AVX__/__AVX2__/__FMA__ macros make
// ATen's and Sleef's headers declare their AVX2 paths. The vector builds come after the baseline files
// in the link order, so where this file shares an inline function with one of those the linker keeps
// the baseline copy (and this copy over the AVX-512 file's: pointwise_cpu_avx512.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "avx2_macros.h"
#define LSTM_EXT_CPU_VARIANT avx2
#include "pointwise_cpu_kernels.h"
#pragma GCC pop_options
#else
// Not x86-64: __builtin_cpu_supports("avx2") is false there, so the baseline serves; this keeps the symbol.
#define LSTM_EXT_CPU_VARIANT avx2
#include "pointwise_cpu_kernels.h"
#endif
