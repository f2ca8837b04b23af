#include "kernels/cpu/softmax_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.h"

namespace strata::cpu {
namespace {

constexpr int kLanes = 16;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // ln 2 split for Cody-Waite
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kMinArg = -87.0f;  // 2^k stays a normal float
// Cephes expf polynomial for exp(r) - 1 - r on |r| <= ln(2) / 2.
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;

// exp(t) for t <= 0, the operation sequence every variant repeats.
inline float ExpScalar(float t) {
  t = t > kMinArg ? t : kMinArg;  // maxps(t, kMinArg): NaN becomes kMinArg
  const float k = std::nearbyint(t * kLog2e);
  float r = std::fma(k, -kLn2Hi, t);
  r = std::fma(k, -kLn2Lo, r);
  float p = std::fma(kP0, r, kP1);
  p = std::fma(p, r, kP2);
  p = std::fma(p, r, kP3);
  p = std::fma(p, r, kP4);
  p = std::fma(p, r, kP5);
  const float y = std::fma(p, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// The fixed tree over the 16 lane sums.
float CombineLanes(const float* lane) {
  float a[8], b[4];
  for (int i = 0; i < 8; ++i) a[i] = lane[i] + lane[i + 8];
  for (int i = 0; i < 4; ++i) b[i] = a[i] + a[i + 4];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

SoftmaxStats StatsScalar(const float* x, int64_t m) {
  const float max = *std::max_element(x, x + m);
  float lane[kLanes] = {};
  for (int64_t j = 0; j < m; ++j) lane[j % kLanes] += ExpScalar(x[j] - max);
  return {max, CombineLanes(lane)};
}

#if STRATA_CPU_X86

STRATA_TARGET_AVX2 inline __m256 ExpAvx2(__m256 t) {
  t = _mm256_max_ps(t, _mm256_set1_ps(kMinArg));
  const __m256 k =
      _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(kLog2e)),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kLn2Hi), t);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                                 _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

STRATA_TARGET_AVX2 SoftmaxStats StatsAvx2(const float* x, int64_t m) {
  __m256 vmax = _mm256_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + j));
  float lanes8[8];
  _mm256_storeu_ps(lanes8, vmax);
  float max = *std::max_element(lanes8, lanes8 + 8);
  for (; j < m; ++j) max = std::max(max, x[j]);

  // Lanes 0-7 and 8-15 of the 16-lane layout.
  const __m256 vm = _mm256_set1_ps(max);
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  j = 0;
  for (; j + 16 <= m; j += 16) {
    lo = _mm256_add_ps(lo, ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm)));
    hi = _mm256_add_ps(hi,
                       ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm)));
  }
  float lane[kLanes];
  _mm256_storeu_ps(lane, lo);
  _mm256_storeu_ps(lane + 8, hi);
  for (int l = 0; j < m; ++j, ++l) lane[l] += ExpScalar(x[j] - max);
  return {max, CombineLanes(lane)};
}

STRATA_TARGET_AVX512 inline __m512 ExpAvx512(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(kMinArg));
  const __m512 k =
      _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(kLog2e)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kLn2Hi), t);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP0), r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
                                 _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

STRATA_TARGET_AVX512 SoftmaxStats StatsAvx512(const float* x, int64_t m) {
  __m512 vmax = _mm512_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 16 <= m; j += 16) {
    vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + j));
  }
  float max = _mm512_reduce_max_ps(vmax);  // exact in any order
  for (; j < m; ++j) max = std::max(max, x[j]);

  const __m512 vm = _mm512_set1_ps(max);
  __m512 acc = _mm512_setzero_ps();
  j = 0;
  for (; j + 16 <= m; j += 16) {
    acc = _mm512_add_ps(acc,
                        ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm)));
  }
  float lane[kLanes];
  _mm512_storeu_ps(lane, acc);
  for (int l = 0; j < m; ++j, ++l) lane[l] += ExpScalar(x[j] - max);
  return {max, CombineLanes(lane)};
}

#endif  // STRATA_CPU_X86

}  // namespace

SoftmaxStats ComputeSoftmaxStats(Isa isa, const float* x, int64_t m) {
  if (m <= 0) return {};
#if STRATA_CPU_X86
  switch (isa) {
    case Isa::kAvx512:
      return StatsAvx512(x, m);
    case Isa::kAvx2:
      return StatsAvx2(x, m);
    case Isa::kScalar:
      break;
  }
#endif
  return StatsScalar(x, m);
}

}  // namespace strata::cpu
