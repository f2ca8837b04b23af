#include "kernels/cpu/softmax_stats.h"

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_exp.h"

namespace strata::cpu {
namespace {

using internal::CombineSumLanes;
using internal::ExpScalar;
using internal::kSumLanes;

SoftmaxStats StatsScalar(const float* x, int64_t m) {
  const float max = *std::max_element(x, x + m);
  float lane[kSumLanes] = {};
  for (int64_t j = 0; j < m; ++j) lane[j % kSumLanes] += ExpScalar(x[j] - max);
  return {max, CombineSumLanes(lane)};
}

#if STRATA_CPU_X86

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
    lo = _mm256_add_ps(
        lo, internal::ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm)));
    hi = _mm256_add_ps(
        hi, internal::ExpAvx2(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm)));
  }
  float lane[kSumLanes];
  _mm256_storeu_ps(lane, lo);
  _mm256_storeu_ps(lane + 8, hi);
  for (int l = 0; j < m; ++j, ++l) lane[l] += ExpScalar(x[j] - max);
  return {max, CombineSumLanes(lane)};
}

STRATA_TARGET_AVX512 SoftmaxStats StatsAvx512(const float* x, int64_t m) {
  const float max = internal::MaxAvx512(x, m);
  const __m512 vm = _mm512_set1_ps(max);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= m; j += 16) {
    acc = _mm512_add_ps(
        acc, internal::ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm)));
  }
  float lane[kSumLanes];
  _mm512_storeu_ps(lane, acc);
  for (int l = 0; j < m; ++j, ++l) lane[l] += ExpScalar(x[j] - max);
  return {max, CombineSumLanes(lane)};
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
