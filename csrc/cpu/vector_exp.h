// vector_exp.h -- exp over a vector of floats, inline, for the gate math's sigmoid and tanh in the AVX2
// and AVX-512 builds: ATen's Vectorized<float>::exp calls Sleef's expf out of line, a call that showed in
// small steps' profiles (benchmarks/README.md); sigmoid and tanh stay as accurate as on Sleef's
// (tests/test_activations.py).
//
// Cephes' expf: x = n ln2 + r with n = round(x / ln2) and ln2 in two parts (the first has 9 significant
// bits, so n times it is exact and r carries no rounding of n ln2), e^r = 1 + (r + r^2 P(r)) with a
// degree-5 P on |r| <= ln2 / 2, then times 2^n, built in the exponent bits. 2^n is applied as two
// factors, each a normal float for every n here, so results that are denormal or overflow are rounded
// once, as exp's are. x is first clamped to [-104, 89], past which exp is 0 or inf in float; the clamp
// keeps NaN (clamp_min/clamp_max return x when it is NaN), and a NaN r makes the result NaN. Part of
// cpu_backend.h's variants: include only from there.
#pragma once

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <ATen/cpu/vec/vec.h>
#include <immintrin.h>

#include <cstdint>

namespace lstm_ext {
namespace LSTM_EXT_CPU_VARIANT {
namespace vector_exp {

using V = at::vec::Vectorized<float>;

constexpr float kMinArgument = -104.f;  // e^x < 2^-150 below: rounds to 0
constexpr float kMaxArgument = 89.f;    // e^x > FLT_MAX above: inf
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f;  // ln2 = kLn2High - kLn2LowNeg
constexpr float kLn2LowNeg = 2.12194440e-4f;
// 1.5 * 2^23: x / ln2 plus this, rounded to float, is this plus round(x / ln2), which its low bits hold.
constexpr float kRoundingMagic = 12582912.f;
constexpr int32_t kRoundingMagicBits = 0x4B400000;

// value * 2^n, where shifted = kRoundingMagic + n: 2^n as 2^(n >> 1) * 2^(n - (n >> 1)), each factor's
// exponent field n / 2 + 127.
inline V times_power_of_two(const V& value, const V& shifted) {
#ifdef CPU_CAPABILITY_AVX512
  const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(kRoundingMagicBits));
  const __m512i half = _mm512_srai_epi32(n, 1), bias = _mm512_set1_epi32(127);
  const __m512 first = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(half, bias), 23));
  const __m512 second = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(n, half), bias), 23));
  return _mm512_mul_ps(_mm512_mul_ps(value, first), second);
#else
  const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(kRoundingMagicBits));
  const __m256i half = _mm256_srai_epi32(n, 1), bias = _mm256_set1_epi32(127);
  const __m256 first = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 second = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(n, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(value, first), second);
#endif
}

inline V exp(const V& x_in) {
  using at::vec::fmadd;
  const V x = at::vec::clamp_max(at::vec::clamp_min(x_in, V(kMinArgument)), V(kMaxArgument));
  const V shifted = fmadd(x, V(kLog2e), V(kRoundingMagic));
  const V n = shifted - V(kRoundingMagic);
  const V r = fmadd(n, V(kLn2LowNeg), fmadd(n, V(-kLn2High), x));
  // P's coefficients, highest degree first (Cephes).
  V p = fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
  p = fmadd(p, r, V(8.3334519073e-3f));
  p = fmadd(p, r, V(4.1665795894e-2f));
  p = fmadd(p, r, V(1.6666665459e-1f));
  p = fmadd(p, r, V(5.0000001201e-1f));
  const V e_r = fmadd(p, r * r, r) + V(1.f);  // 1 added last: one rounding near 1
  return times_power_of_two(e_r, shifted);
}

}  // namespace vector_exp
}  // namespace LSTM_EXT_CPU_VARIANT
}  // namespace lstm_ext
#endif
