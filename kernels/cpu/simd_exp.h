// Internal (not a public header): one float exponential for the CPU kernels,
// with scalar, AVX2 and AVX-512 forms that give the same bits, and the
// 16-lane summation layout that makes a vectorised sum the same on every
// ISA. libm's expf is scalar only (GCC vectorises it only with -ffast-math),
// and it ran once per element in SwiGLU, attention softmax, the exit
// confidence and the sampler: several percent of a decode step.
//
// exp(t) = 2^k * p(r): k = round(t * log2 e), r = t - k ln 2 (Cody-Waite, two
// constants), p the Cephes degree-6 polynomial; every step is one IEEE
// operation or one fused multiply-add in a fixed order, so the three forms
// agree bit for bit. t is clamped to [-87, 88] (2^k stays a normal float):
// exp(t < -87) gives exp(-87) < 2e-38 instead of a smaller number, and
// exp(t > 88) gives exp(88) ~ 1.7e38 instead of overflowing. Relative error
// about 2 ulp against the exact value.
#ifndef STRATA_KERNELS_CPU_SIMD_EXP_H_
#define STRATA_KERNELS_CPU_SIMD_EXP_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.h"

namespace strata::cpu::internal {

inline constexpr float kExpMin = -87.0f;
inline constexpr float kExpMax = 88.0f;
inline constexpr float kExpLog2e = 1.44269504088896341f;
inline constexpr float kExpLn2Hi = 0.693359375f;
inline constexpr float kExpLn2Lo = -2.12194440e-4f;
inline constexpr float kExpP0 = 1.9875691500e-4f;
inline constexpr float kExpP1 = 1.3981999507e-3f;
inline constexpr float kExpP2 = 8.3334519073e-3f;
inline constexpr float kExpP3 = 4.1665795894e-2f;
inline constexpr float kExpP4 = 1.6666665459e-1f;
inline constexpr float kExpP5 = 5.0000001201e-1f;

// Sums are kept in 16 lanes (element j in lane j % 16, in index order) and
// combined by this tree, whatever the vector width.
inline constexpr int kSumLanes = 16;
inline float CombineSumLanes(const float* lane) {
  float a[8], b[4];
  for (int i = 0; i < 8; ++i) a[i] = lane[i] + lane[i + 8];
  for (int i = 0; i < 4; ++i) b[i] = a[i] + a[i + 4];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

inline float ExpScalar(float t) {
  // maxps / minps semantics (the second operand when t is NaN).
  t = t > kExpMin ? t : kExpMin;
  t = t < kExpMax ? t : kExpMax;
  const float k = std::nearbyint(t * kExpLog2e);
  float r = std::fma(k, -kExpLn2Hi, t);
  r = std::fma(k, -kExpLn2Lo, r);
  float p = std::fma(kExpP0, r, kExpP1);
  p = std::fma(p, r, kExpP2);
  p = std::fma(p, r, kExpP3);
  p = std::fma(p, r, kExpP4);
  p = std::fma(p, r, kExpP5);
  const float y = std::fma(p, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

#if STRATA_CPU_X86

STRATA_TARGET_AVX2 inline __m256 ExpAvx2(__m256 t) {
  t = _mm256_max_ps(t, _mm256_set1_ps(kExpMin));
  t = _mm256_min_ps(t, _mm256_set1_ps(kExpMax));
  const __m256 k =
      _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(kExpLog2e)),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kExpLn2Hi), t);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kExpLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kExpP0), r, _mm256_set1_ps(kExpP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                                 _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

STRATA_TARGET_AVX512 inline __m512 ExpAvx512(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(kExpMin));
  t = _mm512_min_ps(t, _mm512_set1_ps(kExpMax));
  const __m512 k =
      _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(kExpLog2e)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kExpLn2Hi), t);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kExpLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kExpP0), r, _mm512_set1_ps(kExpP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
                                 _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

#endif  // STRATA_CPU_X86

// x[j] = exp(x[j] - shift) for j < n; returns their sum in the 16-lane
// layout. The same bits from every form.
inline float ExpShiftSumScalar(float* x, int64_t n, float shift) {
  float lane[kSumLanes] = {};
  for (int64_t j = 0; j < n; ++j) {
    x[j] = ExpScalar(x[j] - shift);
    lane[j % kSumLanes] += x[j];
  }
  return CombineSumLanes(lane);
}

#if STRATA_CPU_X86

STRATA_TARGET_AVX2 inline float ExpShiftSumAvx2(float* x, int64_t n,
                                                float shift) {
  const __m256 vs = _mm256_set1_ps(shift);
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 a = ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), vs));
    const __m256 b = ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vs));
    _mm256_storeu_ps(x + j, a);
    _mm256_storeu_ps(x + j + 8, b);
    lo = _mm256_add_ps(lo, a);
    hi = _mm256_add_ps(hi, b);
  }
  float lane[kSumLanes];
  _mm256_storeu_ps(lane, lo);
  _mm256_storeu_ps(lane + 8, hi);
  for (int l = 0; j < n; ++j, ++l) {
    x[j] = ExpScalar(x[j] - shift);
    lane[l] += x[j];
  }
  return CombineSumLanes(lane);
}

STRATA_TARGET_AVX512 inline float ExpShiftSumAvx512(float* x, int64_t n,
                                                    float shift) {
  const __m512 vs = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vs));
    _mm512_storeu_ps(x + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  float lane[kSumLanes];
  _mm512_storeu_ps(lane, acc);
  for (int l = 0; j < n; ++j, ++l) {
    x[j] = ExpScalar(x[j] - shift);
    lane[l] += x[j];
  }
  return CombineSumLanes(lane);
}

#endif  // STRATA_CPU_X86

}  // namespace strata::cpu::internal

#endif  // STRATA_KERNELS_CPU_SIMD_EXP_H_
