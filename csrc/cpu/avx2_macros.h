// avx2_macros.h -- the predefined macros that `#pragma GCC target("avx2,fma")` does not set, so that
// ATen's and Sleef's headers declare their AVX2 paths. Include after the pragma, in the vector builds
// only (pointwise_cpu_avx2.cpp, pointwise_cpu_avx512.cpp: AVX-512 builds on AVX2).
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
