// Internal per-ISA building blocks shared by the CPU kernels (not a public
// header). Each reduction here has an operation order that depends only on
// its length: a fixed number of vector lanes accumulated in index order, a
// masked tail, then one fixed horizontal-sum tree. This is what makes the
// kernels batch invariant (docs/engine.md).
//
// The AVX2/AVX-512 functions carry target attributes, so they may only be
// called from functions compiled for the same (or a wider) target, after a
// runtime check (kernels/cpu/isa.h).
#ifndef STRATA_KERNELS_CPU_SIMD_H_
#define STRATA_KERNELS_CPU_SIMD_H_

#include <cmath>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers initialise "undefined" vectors from themselves,
// which -Wuninitialized reports at every inlined use (GCC PR105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define STRATA_CPU_X86 1
#define STRATA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define STRATA_TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define STRATA_CPU_X86 0
#endif

namespace strata::cpu::internal {

// Scalar dot product: 8 striped accumulators, then a pairwise tree.
inline float DotScalar(const float* a, const float* b, int64_t k) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  for (int l = 0; i + l < k; ++l) acc[l] += a[i + l] * b[i + l];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
         ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// y[i] += a * x[i].
inline void AxpyScalar(float a, const float* x, int64_t count, float* y) {
  for (int64_t i = 0; i < count; ++i) y[i] += a * x[i];
}

#if STRATA_CPU_X86

// ---- AVX2 + FMA: 8 lanes ----

STRATA_TARGET_AVX2 inline float HorizontalSumAvx2(__m256 v) {
  __m128 lo =
      _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// Lane mask with the first `count` (0..8) lanes set, for maskload/maskstore.
STRATA_TARGET_AVX2 inline __m256i TailMaskAvx2(int64_t count) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lanes);
}

STRATA_TARGET_AVX2 inline float DotAvx2(const float* a, const float* b,
                                        int64_t k) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  }
  if (i < k) {
    const __m256i mask = TailMaskAvx2(k - i);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mask),
                          _mm256_maskload_ps(b + i, mask), acc);
  }
  return HorizontalSumAvx2(acc);
}

STRATA_TARGET_AVX2 inline void AxpyAvx2(float a, const float* x, int64_t count,
                                        float* y) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
                                            _mm256_loadu_ps(y + i)));
  }
  if (i < count) {
    const __m256i mask = TailMaskAvx2(count - i);
    _mm256_maskstore_ps(y + i, mask,
                        _mm256_fmadd_ps(av, _mm256_maskload_ps(x + i, mask),
                                        _mm256_maskload_ps(y + i, mask)));
  }
}

// ---- AVX-512F: 16 lanes ----

STRATA_TARGET_AVX512 inline __mmask16 TailMaskAvx512(int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

// A fixed tree (not _mm512_reduce_add_ps, whose GCC 12 header trips
// -Wuninitialized): fold 512 -> 256 -> 128 bits, then as in AVX2.
STRATA_TARGET_AVX512 inline float HorizontalSumAvx512(__m512 v) {
  __m512 t = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));
  __m128 s = _mm512_castps512_ps128(t);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The largest of x[0, n), n >= 1, with std::max_element's value: a maximum
// is the same in any order, so the lanes may meet in any order. A NaN wins
// only from x[0] there (every later comparison with it is false), and
// max_ps(v, m) returns m when v is NaN, so later NaNs are passed over here
// too. (Of -0 and +0 either may come out.)
STRATA_TARGET_AVX512 inline float MaxAvx512(const float* x, int64_t n) {
  if (std::isnan(x[0])) return x[0];
  __m512 vmax = _mm512_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    vmax = _mm512_max_ps(_mm512_loadu_ps(x + j), vmax);
  }
  float max = _mm512_reduce_max_ps(vmax);
  for (; j < n; ++j) {
    if (max < x[j]) max = x[j];
  }
  return max;
}

STRATA_TARGET_AVX512 inline float DotAvx512(const float* a, const float* b,
                                            int64_t k) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  }
  if (i < k) {
    const __mmask16 mask = TailMaskAvx512(k - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i),
                          _mm512_maskz_loadu_ps(mask, b + i), acc);
  }
  return HorizontalSumAvx512(acc);
}

STRATA_TARGET_AVX512 inline void AxpyAvx512(float a, const float* x,
                                            int64_t count, float* y) {
  const __m512 av = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
                                            _mm512_loadu_ps(y + i)));
  }
  if (i < count) {
    const __mmask16 mask = TailMaskAvx512(count - i);
    _mm512_mask_storeu_ps(
        y + i, mask,
        _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, x + i),
                        _mm512_maskz_loadu_ps(mask, y + i)));
  }
}

#endif  // STRATA_CPU_X86

}  // namespace strata::cpu::internal

#endif  // STRATA_KERNELS_CPU_SIMD_H_
