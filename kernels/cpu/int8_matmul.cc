#include "kernels/cpu/int8_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "kernels/cpu/panel_tasks.h"
#include "kernels/cpu/simd.h"

#if STRATA_CPU_X86
#define STRATA_TARGET_AVX_VNNI __attribute__((target("avx2,fma,avxvnni")))
#define STRATA_TARGET_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vnni")))
#endif

namespace strata::cpu {
namespace {

constexpr int64_t kWidth = 16;  // output channels per panel
constexpr int64_t kGroup = 4;   // inputs per 32-bit lane
// Bytes of one group of a panel: 16 columns x 4 inputs.
constexpr int64_t kGroupBytes = kWidth * kGroup;

// Where w_scale[g][j] sits in Int8Panels::scales (the layout in the header).
int64_t ScaleIndex(int64_t j, int64_t g, int64_t num_groups) {
  return ((j / kWidth) * num_groups + g) * kWidth + j % kWidth;
}

// Everything a tile needs: the quantized rows of x and the panels.
struct Operands {
  const int8_t* xq;       // [n][kp]
  const float* x_scales;  // [n]
  const int32_t* x_bias;  // [n][num_groups] 128 * sum_{p in group} xq[i][p]
  const uint8_t* wq;      // panels, wq + 128
  const float* w_scales;  // [panels][num_groups][16]
  float* out;             // [n][m]
  int64_t m, kp;
  // Scale groups: lanes (4 inputs each) per group (all kp / 4 when there
  // is one scale per channel), their number, and whether the scales are per
  // group (the grouped formula, also when one group covers all of k).
  int64_t group_lanes = 0;
  int64_t num_groups = 1;
  bool grouped = false;

  // The lanes [begin, end) of scale group b.
  int64_t LanesBegin(int64_t b) const { return b * group_lanes; }
  int64_t LanesEnd(int64_t b) const {
    return std::min(kp / kGroup, (b + 1) * group_lanes);
  }
  const float* GroupScales(int64_t b, int64_t panel) const {
    return w_scales + ScaleIndex(panel * kWidth, b, num_groups);
  }
  int32_t Bias(int64_t row, int64_t b) const {
    return x_bias[row * num_groups + b];
  }
};

int32_t LoadI32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// ---- activation quantization ----

// Round half to even (the default rounding mode, as vcvtps2dq), saturated to
// [-127, 127] (never reached: |x * inv| <= 127 up to one rounding).
int8_t QuantizeScalar(float v, float inv) {
  const float r = std::nearbyint(v * inv);
  return static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
}

// Shared by every variant: the scale from the row's absmax (and whether it
// saw a NaN or infinity), then the elements [from, k) and the zero padding.
float FinishRow(const float* x, int64_t k, float absmax, bool finite,
                int64_t from, int8_t* xq) {
  const int64_t kp = Int8PaddedK(k);
  if (!finite || absmax == 0.0f) {
    std::memset(xq, 0, static_cast<size_t>(kp));
    return finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = 127.0f / absmax;
  for (int64_t p = from; p < k; ++p) xq[p] = QuantizeScalar(x[p], inv);
  std::memset(xq + k, 0, static_cast<size_t>(kp - k));
  return absmax / 127.0f;
}

float QuantizeRowScalar(const float* x, int64_t k, int8_t* xq) {
  float absmax = 0.0f;
  bool finite = true;
  for (int64_t p = 0; p < k; ++p) {
    finite = finite && std::isfinite(x[p]);
    absmax = std::max(absmax, std::fabs(x[p]));
  }
  return FinishRow(x, k, absmax, finite, 0, xq);
}

#if STRATA_CPU_X86

STRATA_TARGET_AVX2 float QuantizeRowAvx2(const float* x, int64_t k,
                                         int8_t* xq) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 vmax = _mm256_setzero_ps();
  __m256 bad = _mm256_setzero_ps();  // lanes that saw NaN or +-inf
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + p));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float absmax = 0.0f;
  for (float v : lanes) absmax = std::max(absmax, v);
  bool finite = _mm256_movemask_ps(bad) == 0;
  for (int64_t t = p; t < k; ++t) {
    finite = finite && std::isfinite(x[t]);
    absmax = std::max(absmax, std::fabs(x[t]));
  }
  if (!finite || absmax == 0.0f) return FinishRow(x, k, absmax, finite, 0, xq);
  const __m256 inv = _mm256_set1_ps(127.0f / absmax);
  p = 0;
  for (; p + 32 <= k; p += 32) {
    __m256i v[4];
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_cvtps_epi32(
          _mm256_mul_ps(_mm256_loadu_ps(x + p + 8 * j), inv));
    }
    // packs work per 128-bit lane: the bytes come out in 4-byte groups in
    // the order 0 2 4 6 1 3 5 7 of the 8 groups, which the permute undoes.
    const __m256i w16a = _mm256_packs_epi32(v[0], v[1]);
    const __m256i w16b = _mm256_packs_epi32(v[2], v[3]);
    const __m256i b8 = _mm256_packs_epi16(w16a, w16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(
        b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + p), ordered);
  }
  return FinishRow(x, k, absmax, true, p, xq);
}

STRATA_TARGET_AVX512_VNNI float QuantizeRowAvx512(const float* x, int64_t k,
                                                  int8_t* xq) {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + p));
    bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, vmax);
  float absmax = 0.0f;
  for (float v : lanes) absmax = std::max(absmax, v);
  bool finite = bad == 0;
  for (int64_t t = p; t < k; ++t) {
    finite = finite && std::isfinite(x[t]);
    absmax = std::max(absmax, std::fabs(x[t]));
  }
  if (!finite || absmax == 0.0f) return FinishRow(x, k, absmax, finite, 0, xq);
  const __m512 inv = _mm512_set1_ps(127.0f / absmax);
  p = 0;
  for (; p + 16 <= k; p += 16) {
    const __m512i v =
        _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + p), inv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + p),
                     _mm512_cvtsepi32_epi8(v));
  }
  return FinishRow(x, k, absmax, true, p, xq);
}

#endif  // STRATA_CPU_X86

// ---- products ----

// out for one row of one panel from its exact sums: float(sum) * (x_scale *
// w_scale), the same two roundings in every variant.
void StoreScalar(const Operands& o, int64_t row, int64_t panel,
                 const int32_t* sums) {
  const int64_t cols = std::min(kWidth, o.m - panel * kWidth);
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t j = panel * kWidth + c;
    o.out[row * o.m + j] =
        static_cast<float>(sums[c]) * (o.x_scales[row] * o.w_scales[j]);
  }
}

// The exact sums of one row and panel over lanes [g0, g1).
void SumsScalar(const int8_t* x, const uint8_t* w, int64_t g0, int64_t g1,
                int32_t* sums) {
  for (int64_t c = 0; c < kWidth; ++c) sums[c] = 0;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t c = 0; c < kWidth; ++c) {
      for (int64_t t = 0; t < kGroup; ++t) {
        sums[c] +=
            static_cast<int32_t>(x[g * kGroup + t]) *
            (static_cast<int32_t>(w[g * kGroupBytes + c * kGroup + t]) - 128);
      }
    }
  }
}

// Per-group scales: the fma chain over the groups, then x_scale.
void BlockScalarGrouped(const Operands& o, const internal::PanelBlock& b) {
  const int64_t groups = o.kp / kGroup;
  for (int64_t i = b.row_begin; i < b.row_end; ++i) {
    const int8_t* x = o.xq + i * o.kp;
    for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
      const uint8_t* w = o.wq + pj * groups * kGroupBytes;
      float acc[kWidth] = {};
      for (int64_t g = 0; g < o.num_groups; ++g) {
        int32_t sums[kWidth];
        SumsScalar(x, w, o.LanesBegin(g), o.LanesEnd(g), sums);
        const float* ws = o.GroupScales(g, pj);
        for (int64_t c = 0; c < kWidth; ++c) {
          acc[c] = std::fma(static_cast<float>(sums[c]), ws[c], acc[c]);
        }
      }
      const int64_t cols = std::min(kWidth, o.m - pj * kWidth);
      for (int64_t c = 0; c < cols; ++c) {
        o.out[i * o.m + pj * kWidth + c] = acc[c] * o.x_scales[i];
      }
    }
  }
}

void BlockScalar(const Operands& o, const internal::PanelBlock& b) {
  if (o.grouped) return BlockScalarGrouped(o, b);
  const int64_t groups = o.kp / kGroup;
  for (int64_t i = b.row_begin; i < b.row_end; ++i) {
    const int8_t* x = o.xq + i * o.kp;
    for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
      const uint8_t* w = o.wq + pj * groups * kGroupBytes;
      int32_t sums[kWidth];
      SumsScalar(x, w, 0, groups, sums);
      StoreScalar(o, i, pj, sums);
    }
  }
}

#if STRATA_CPU_X86

// From the biased sums sum_p xq * (wq + 128): subtracts 128 * sum_p xq.
STRATA_TARGET_AVX2 inline void StoreAvx2(const Operands& o, int64_t row,
                                         int64_t panel, __m256i lo,
                                         __m256i hi) {
  const __m256i bias = _mm256_set1_epi32(o.Bias(row, 0));
  lo = _mm256_sub_epi32(lo, bias);
  hi = _mm256_sub_epi32(hi, bias);
  const __m256 xs = _mm256_set1_ps(o.x_scales[row]);
  const float* ws = o.w_scales + panel * kWidth;
  alignas(32) float tmp[kWidth];
  _mm256_store_ps(tmp, _mm256_mul_ps(_mm256_cvtepi32_ps(lo),
                                     _mm256_mul_ps(xs, _mm256_loadu_ps(ws))));
  _mm256_store_ps(tmp + 8,
                  _mm256_mul_ps(_mm256_cvtepi32_ps(hi),
                                _mm256_mul_ps(xs, _mm256_loadu_ps(ws + 8))));
  const int64_t cols = std::min(kWidth, o.m - panel * kWidth);
  std::memcpy(o.out + row * o.m + panel * kWidth, tmp,
              static_cast<size_t>(cols) * sizeof(float));
}

// Per-group scales: adds group g's sums (biased, as StoreAvx2 takes them) times
// its scales to the row's float accumulators.
STRATA_TARGET_AVX2 inline void FoldGroupAvx2(const Operands& o, int64_t row,
                                             int64_t panel, int64_t g,
                                             __m256i lo, __m256i hi,
                                             __m256& acc_lo, __m256& acc_hi) {
  const __m256i bias = _mm256_set1_epi32(o.Bias(row, g));
  const float* ws = o.GroupScales(g, panel);
  acc_lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(lo, bias)),
                           _mm256_loadu_ps(ws), acc_lo);
  acc_hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(hi, bias)),
                           _mm256_loadu_ps(ws + 8), acc_hi);
}

STRATA_TARGET_AVX2 inline void StoreGroupedAvx2(const Operands& o, int64_t row,
                                                int64_t panel, __m256 acc_lo,
                                                __m256 acc_hi) {
  const __m256 xs = _mm256_set1_ps(o.x_scales[row]);
  alignas(32) float tmp[kWidth];
  _mm256_store_ps(tmp, _mm256_mul_ps(acc_lo, xs));
  _mm256_store_ps(tmp + 8, _mm256_mul_ps(acc_hi, xs));
  const int64_t cols = std::min(kWidth, o.m - panel * kWidth);
  std::memcpy(o.out + row * o.m + panel * kWidth, tmp,
              static_cast<size_t>(cols) * sizeof(float));
}

// AVX2 without VNNI: bytes widened to 16 bits, vpmaddwd adds the products of
// adjacent pairs exactly into 32 bits (vpmaddubsw would saturate). Each
// quarter q of a panel group (columns 4q..4q+3) gives 2 lanes per column,
// folded at the end.
template <int R>
STRATA_TARGET_AVX2 void TileAvx2(const Operands& o, int64_t row,
                                 int64_t panel) {
  const int64_t groups = o.kp / kGroup;
  const uint8_t* w = o.wq + panel * groups * kGroupBytes;
  __m256 facc[R][2];
  for (int r = 0; r < R; ++r) facc[r][0] = facc[r][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < o.num_groups; ++b) {
    __m256i acc[R][4];
    for (int r = 0; r < R; ++r) {
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_si256();
    }
    for (int64_t g = o.LanesBegin(b); g < o.LanesEnd(b); ++g) {
      __m256i wv[4];
      for (int q = 0; q < 4; ++q) {
        wv[q] = _mm256_cvtepu8_epi16(_mm_loadu_si128(
            reinterpret_cast<const __m128i*>(w + g * kGroupBytes + 16 * q)));
      }
      for (int r = 0; r < R; ++r) {
        const __m256i xb = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(
            _mm_cvtsi32_si128(LoadI32(o.xq + (row + r) * o.kp + g * kGroup))));
        for (int q = 0; q < 4; ++q) {
          acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(xb, wv[q]));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      // hadd gives columns 0 1 4 5 | 2 3 6 7; the permute orders them.
      const __m256i lo = _mm256_permute4x64_epi64(
          _mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
      const __m256i hi = _mm256_permute4x64_epi64(
          _mm256_hadd_epi32(acc[r][2], acc[r][3]), 0xD8);
      if (o.grouped) {
        FoldGroupAvx2(o, row + r, panel, b, lo, hi, facc[r][0], facc[r][1]);
      } else {
        StoreAvx2(o, row + r, panel, lo, hi);
      }
    }
  }
  if (!o.grouped) return;
  for (int r = 0; r < R; ++r) {
    StoreGroupedAvx2(o, row + r, panel, facc[r][0], facc[r][1]);
  }
}

// vpdpbusd multiplies unsigned by signed bytes: the panels hold wq + 128,
// x goes in signed (a broadcast), and 128 * sum_p xq comes off at the end.
template <int R>
STRATA_TARGET_AVX_VNNI void TileAvxVnni(const Operands& o, int64_t row,
                                        int64_t panel) {
  const int64_t groups = o.kp / kGroup;
  const uint8_t* w = o.wq + panel * groups * kGroupBytes;
  __m256 facc[R][2];
  for (int r = 0; r < R; ++r) facc[r][0] = facc[r][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < o.num_groups; ++b) {
    __m256i lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      lo[r] = _mm256_setzero_si256();
      hi[r] = _mm256_setzero_si256();
    }
    for (int64_t g = o.LanesBegin(b); g < o.LanesEnd(b); ++g) {
      const __m256i wl = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + g * kGroupBytes));
      const __m256i wh = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + g * kGroupBytes + 32));
      for (int r = 0; r < R; ++r) {
        const __m256i xb =
            _mm256_set1_epi32(LoadI32(o.xq + (row + r) * o.kp + g * kGroup));
        lo[r] = _mm256_dpbusd_avx_epi32(lo[r], wl, xb);
        hi[r] = _mm256_dpbusd_avx_epi32(hi[r], wh, xb);
      }
    }
    for (int r = 0; r < R; ++r) {
      if (o.grouped) {
        FoldGroupAvx2(o, row + r, panel, b, lo[r], hi[r], facc[r][0],
                      facc[r][1]);
      } else {
        StoreAvx2(o, row + r, panel, lo[r], hi[r]);
      }
    }
  }
  if (!o.grouped) return;
  for (int r = 0; r < R; ++r) {
    StoreGroupedAvx2(o, row + r, panel, facc[r][0], facc[r][1]);
  }
}

// acc += the 4-byte dot products of u (unsigned) and s (signed) per lane:
// vpdpbusd in inline assembly, because GCC 12 copies the accumulator of the
// intrinsic around (two register moves per vpdpbusd in the 8 x 3 tile,
// which halved its speed).
STRATA_TARGET_AVX512_VNNI inline __m512i Dpbusd(__m512i acc, __m512i u,
                                                __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

// acc[r][c] += the products of lane g (4 inputs) of row + r and panel + c.
template <int R, int C>
STRATA_TARGET_AVX512_VNNI inline __attribute__((always_inline)) void LaneAvx512(
    const Operands& o, const uint8_t* w, int64_t groups, int64_t row, int64_t g,
    __m512i (&acc)[R][C]) {
  __m512i wv[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    wv[c] = _mm512_loadu_si512(w + (c * groups + g) * kGroupBytes);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512i xb =
        _mm512_set1_epi32(LoadI32(o.xq + (row + r) * o.kp + g * kGroup));
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = Dpbusd(acc[r][c], wv[c], xb);
  }
}

// Adds lanes [g0, g1) of R rows x C panels to acc. kLanes > 0: exactly that
// many lanes (a whole scale group), unrolled: a loop that exits every few
// dozen iterations was 15-30% slower at batch 1.
template <int R, int C, int kLanes>
STRATA_TARGET_AVX512_VNNI inline __attribute__((always_inline)) void
LaneSumsAvx512(const Operands& o, const uint8_t* w, int64_t groups, int64_t row,
               int64_t g0, int64_t g1, __m512i (&acc)[R][C]) {
  if constexpr (kLanes > 0) {
#pragma GCC unroll 32
    for (int64_t t = 0; t < kLanes; ++t) {
      LaneAvx512<R, C>(o, w, groups, row, g0 + t, acc);
    }
  } else {
#pragma GCC unroll 2
    for (int64_t g = g0; g < g1; ++g)
      LaneAvx512<R, C>(o, w, groups, row, g, acc);
  }
}

// R rows x C panels of 16 columns: R * C accumulators (24 of 32 registers
// at 8 x 3), so each weight load feeds R vpdpbusd.
template <int R, int C>
STRATA_TARGET_AVX512_VNNI void TileAvx512(const Operands& o, int64_t row,
                                          int64_t panel) {
  const int64_t groups = o.kp / kGroup;
  const uint8_t* w = o.wq + panel * groups * kGroupBytes;
  __m512i acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  }
  LaneSumsAvx512<R, C, 0>(o, w, groups, row, 0, groups, acc);
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const int64_t pj = panel + c;
    const __m512 ws = _mm512_loadu_ps(o.w_scales + pj * kWidth);
    const __mmask16 mask =
        internal::TailMaskAvx512(std::min(kWidth, o.m - pj * kWidth));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 v =
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                            acc[r][c], _mm512_set1_epi32(o.Bias(row + r, 0)))),
                        _mm512_mul_ps(_mm512_set1_ps(o.x_scales[row + r]), ws));
      _mm512_mask_storeu_ps(o.out + (row + r) * o.m + pj * kWidth, mask, v);
    }
  }
}

// Per-group scales: R (<= 4) rows x C panels, the int32 accumulators
// cleared per group and folded into R * C float ones (2 R C + C registers).
// kLanes: the lanes of a whole group when it is one of the unrolled sizes
// (see LaneSumsAvx512), else 0.
template <int R, int C, int kLanes>
STRATA_TARGET_AVX512_VNNI void TileAvx512Grouped(const Operands& o, int64_t row,
                                                 int64_t panel) {
  static_assert(R <= 4);
  const int64_t groups = o.kp / kGroup;
  const uint8_t* w = o.wq + panel * groups * kGroupBytes;
  __m512 facc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) facc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < o.num_groups; ++b) {
    __m512i acc[R][C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
    }
    const int64_t g0 = o.LanesBegin(b), g1 = o.LanesEnd(b);
    if (kLanes > 0 && g1 - g0 == kLanes) {
      LaneSumsAvx512<R, C, kLanes>(o, w, groups, row, g0, g1, acc);
    } else {
      LaneSumsAvx512<R, C, 0>(o, w, groups, row, g0, g1, acc);
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __m512 ws = _mm512_loadu_ps(o.GroupScales(b, panel + c));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        facc[r][c] = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_sub_epi32(
                acc[r][c], _mm512_set1_epi32(o.Bias(row + r, b)))),
            ws, facc[r][c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const int64_t pj = panel + c;
    const __mmask16 mask =
        internal::TailMaskAvx512(std::min(kWidth, o.m - pj * kWidth));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(
          o.out + (row + r) * o.m + pj * kWidth, mask,
          _mm512_mul_ps(facc[r][c], _mm512_set1_ps(o.x_scales[row + r])));
    }
  }
}

// Per-group tiles of up to 4 rows, unrolled for groups of 32, 64 and 128.
template <int R, int C>
STRATA_TARGET_AVX512_VNNI void TileAvx512GroupedAnySize(const Operands& o,
                                                        int64_t row,
                                                        int64_t panel) {
  switch (o.group_lanes) {
    case 8:
      return TileAvx512Grouped<R, C, 8>(o, row, panel);
    case 16:
      return TileAvx512Grouped<R, C, 16>(o, row, panel);
    case 32:
      return TileAvx512Grouped<R, C, 32>(o, row, panel);
    default:
      return TileAvx512Grouped<R, C, 0>(o, row, panel);
  }
}

// The 8 x 3 tiles for internal::RunTiles8x3; with per-group scales, up to
// two 4-row tiles.
template <int R, int C>
struct Avx512Tile {
  STRATA_TARGET_AVX512_VNNI static void Run(const Operands& o, int64_t row,
                                            int64_t panel) {
    if (!o.grouped) return TileAvx512<R, C>(o, row, panel);
    if constexpr (R > 4) {
      TileAvx512GroupedAnySize<4, C>(o, row, panel);
      TileAvx512GroupedAnySize<R - 4, C>(o, row + 4, panel);
    } else {
      TileAvx512GroupedAnySize<R, C>(o, row, panel);
    }
  }
};

// The 256-bit variants: one panel at a time, up to 4 rows per tile.
template <void (*Tile1)(const Operands&, int64_t, int64_t),
          void (*Tile2)(const Operands&, int64_t, int64_t),
          void (*Tile3)(const Operands&, int64_t, int64_t),
          void (*Tile4)(const Operands&, int64_t, int64_t)>
void Block256(const Operands& o, const internal::PanelBlock& b) {
  for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
    for (int64_t i = b.row_begin; i < b.row_end; i += 4) {
      switch (std::min<int64_t>(4, b.row_end - i)) {
        case 4:
          Tile4(o, i, pj);
          break;
        case 3:
          Tile3(o, i, pj);
          break;
        case 2:
          Tile2(o, i, pj);
          break;
        default:
          Tile1(o, i, pj);
          break;
      }
    }
  }
}

#endif  // STRATA_CPU_X86

float QuantizeRow(Int8Isa isa, const float* x, int64_t k, int8_t* xq) {
  switch (isa) {
#if STRATA_CPU_X86
    case Int8Isa::kAvx512Vnni:
      return QuantizeRowAvx512(x, k, xq);
    case Int8Isa::kAvxVnni:
    case Int8Isa::kAvx2:
      return QuantizeRowAvx2(x, k, xq);
#endif
    default:
      return QuantizeRowScalar(x, k, xq);
  }
}

void Multiply(const KernelContext& ctx, Int8Isa isa, const float* x,
              const Int8Panels& w, int64_t n, int64_t m, int64_t k,
              float* out) {
  if (n <= 0 || m <= 0) return;
  const int64_t kp = Int8PaddedK(k);
  // The quantized rows live for the call on the issuing thread.
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> x_scales;
  thread_local std::vector<int32_t> x_bias;
  const int64_t num_groups = Int8NumGroups(k, w.group_size);
  xq.resize(static_cast<size_t>(n * kp));
  x_scales.resize(static_cast<size_t>(n));
  x_bias.resize(static_cast<size_t>(n * num_groups));
  int8_t* xq_data = xq.data();
  float* xs_data = x_scales.data();
  int32_t* xb_data = x_bias.data();
  Operands o{xq_data, xs_data, xb_data, w.q, w.scales, out, m, kp};
  o.grouped = w.group_size > 0;
  o.group_lanes = o.grouped ? w.group_size / kGroup : kp / kGroup;
  o.num_groups = num_groups;
  const KernelContext quantize_ctx =
      n * k < (1 << 16) ? KernelContext{ctx.isa, nullptr} : ctx;
  quantize_ctx.ParallelFor(n, [&](int64_t i) {
    int8_t* row = xq_data + i * kp;
    xs_data[i] = QuantizeRow(isa, x + i * k, k, row);
    for (int64_t g = 0; g < num_groups; ++g) {
      int32_t sum = 0;
      for (int64_t p = o.LanesBegin(g) * kGroup; p < o.LanesEnd(g) * kGroup;
           ++p) {
        sum += row[p];
      }
      xb_data[i * num_groups + g] = 128 * sum;
    }
  });
  const int64_t num_panels = Int8PaddedRows(m) / kWidth;
  internal::ForEachPanelBlock(
      ctx, n, num_panels, n * m * k / 4, [&](const internal::PanelBlock& b) {
        switch (isa) {
#if STRATA_CPU_X86
          case Int8Isa::kAvx512Vnni:
            internal::RunTiles8x3<Avx512Tile>(o, b);
            return;
          case Int8Isa::kAvxVnni:
            Block256<TileAvxVnni<1>, TileAvxVnni<2>, TileAvxVnni<3>,
                     TileAvxVnni<4>>(o, b);
            return;
          case Int8Isa::kAvx2:
            Block256<TileAvx2<1>, TileAvx2<2>, TileAvx2<3>, TileAvx2<4>>(o, b);
            return;
#endif
          default:
            BlockScalar(o, b);
            return;
        }
      });
}

}  // namespace

std::string_view Int8IsaName(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::kScalar:
      return "scalar";
    case Int8Isa::kAvx2:
      return "avx2";
    case Int8Isa::kAvxVnni:
      return "avx-vnni";
    case Int8Isa::kAvx512Vnni:
      return "avx512-vnni";
  }
  return "unknown";
}

#if STRATA_CPU_X86
// AVX-VNNI (CPUID leaf 7, sub-leaf 1, EAX bit 4), read directly: clang 14's
// __builtin_cpu_supports has no name for it (gcc 12's does).
static bool CpuHasAvxVnni() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (eax & (1u << 4)) != 0;
}
#endif

bool Int8IsaSupported(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::kScalar:
      return true;
#if STRATA_CPU_X86
    case Int8Isa::kAvx2:
      return IsaSupported(Isa::kAvx2);
    case Int8Isa::kAvxVnni:
      return IsaSupported(Isa::kAvx2) && CpuHasAvxVnni();
    case Int8Isa::kAvx512Vnni:
      return IsaSupported(Isa::kAvx512) && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
#else
    default:
      return false;
#endif
  }
  return false;
}

std::vector<Int8Isa> SupportedInt8Isas() {
  std::vector<Int8Isa> isas;
  for (Int8Isa isa : {Int8Isa::kScalar, Int8Isa::kAvx2, Int8Isa::kAvxVnni,
                      Int8Isa::kAvx512Vnni}) {
    if (Int8IsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

Int8Isa Int8IsaFor(Isa isa) {
  if (isa == Isa::kAvx512 && Int8IsaSupported(Int8Isa::kAvx512Vnni)) {
    return Int8Isa::kAvx512Vnni;
  }
  if (isa == Isa::kScalar) return Int8Isa::kScalar;
  if (Int8IsaSupported(Int8Isa::kAvxVnni)) return Int8Isa::kAvxVnni;
  if (Int8IsaSupported(Int8Isa::kAvx2)) return Int8Isa::kAvx2;
  return Int8Isa::kScalar;
}

int64_t Int8PaddedK(int64_t k) { return (k + kGroup - 1) / kGroup * kGroup; }

int64_t Int8PaddedRows(int64_t m) { return (m + kWidth - 1) / kWidth * kWidth; }

int64_t Int8PackedBytes(int64_t m, int64_t k) {
  return Int8PaddedRows(m) * Int8PaddedK(k);
}

int64_t Int8NumGroups(int64_t k, int32_t group_size) {
  return group_size > 0 ? (k + group_size - 1) / group_size : 1;
}

int64_t Int8ScaleCount(int64_t m, int64_t k, int32_t group_size) {
  return Int8NumGroups(k, group_size) * Int8PaddedRows(m);
}

bool Int8GroupSizeValid(int32_t group_size) {
  return group_size == 0 ||
         (group_size > 0 && group_size <= 1024 && group_size % kGroup == 0);
}

void QuantizeWeightInt8(const float* w, int64_t m, int64_t k, uint8_t* q,
                        float* scales, int32_t group_size) {
  const int64_t m_pad = Int8PaddedRows(m), groups = Int8PaddedK(k) / kGroup;
  const int64_t num_groups = Int8NumGroups(k, group_size);
  const int64_t span = group_size > 0 ? group_size : k;  // inputs per group
  std::memset(q, 128, static_cast<size_t>(Int8PackedBytes(m, k)));  // zeros
  std::fill(scales, scales + num_groups * m_pad, 0.0f);
  for (int64_t j = 0; j < m; ++j) {
    const float* row = w + j * k;
    uint8_t* panel = q + (j / kWidth) * groups * kGroupBytes;
    const int64_t c = j % kWidth;
    for (int64_t g = 0; g < num_groups; ++g) {
      const int64_t begin = g * span, end = std::min(k, begin + span);
      float absmax = 0.0f;
      for (int64_t p = begin; p < end; ++p) {
        absmax = std::max(absmax, std::fabs(row[p]));
      }
      if (absmax == 0.0f) continue;
      const float scale = absmax / 127.0f;
      scales[ScaleIndex(j, g, num_groups)] = scale;
      for (int64_t p = begin; p < end; ++p) {
        const float v =
            std::clamp(std::nearbyint(row[p] / scale), -127.0f, 127.0f);
        panel[(p / kGroup) * kGroupBytes + c * kGroup + p % kGroup] =
            static_cast<uint8_t>(static_cast<int32_t>(v) + 128);
      }
    }
  }
}

float QuantizeRowInt8(Int8Isa isa, const float* x, int64_t k, int8_t* xq) {
  return QuantizeRow(isa, x, k, xq);
}

void Int8MatMul(const KernelContext& ctx, const float* x, const Int8Panels& w,
                int64_t n, int64_t m, int64_t k, float* out) {
  Int8MatMul(ctx, Int8IsaFor(ctx.isa), x, w, n, m, k, out);
}

void Int8MatMul(const KernelContext& ctx, Int8Isa isa, const float* x,
                const Int8Panels& w, int64_t n, int64_t m, int64_t k,
                float* out) {
  Multiply(ctx, isa, x, w, n, m, k, out);
}

void Int8MatMulWithOutliers(const KernelContext& ctx, Int8Isa isa,
                            const float* x, const Int8Panels& w, int64_t n,
                            int64_t m, int64_t k, float threshold,
                            int32_t max_outliers, float* out) {
  if (n <= 0 || m <= 0) return;
  // The rows with their outlier columns zeroed, and those columns per row.
  thread_local std::vector<float> inliers;
  thread_local std::vector<std::vector<int32_t>> columns;
  inliers.assign(x, x + n * k);
  columns.resize(static_cast<size_t>(n));
  bool any = false;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t>& cols = columns[static_cast<size_t>(i)];
    cols.clear();
    for (int64_t p = 0; p < k; ++p) {
      if (static_cast<int32_t>(cols.size()) >= max_outliers) break;
      if (std::fabs(x[i * k + p]) >= threshold) {
        cols.push_back(static_cast<int32_t>(p));
        inliers[static_cast<size_t>(i * k + p)] = 0.0f;
      }
    }
    any = any || !cols.empty();
  }
  Multiply(ctx, isa, inliers.data(), w, n, m, k, out);
  if (!any) return;
  const int64_t groups = Int8PaddedK(k) / kGroup;
  const int64_t num_groups = Int8NumGroups(k, w.group_size);
  // The workers have thread_locals of their own: hand them this thread's.
  const std::vector<int32_t>* row_columns = columns.data();
  ctx.ParallelFor(n, [&](int64_t i) {
    const std::vector<int32_t>& cols = row_columns[i];
    if (cols.empty()) return;
    for (int64_t j = 0; j < m; ++j) {
      const uint8_t* lane =
          w.q + (j / kWidth) * groups * kGroupBytes + (j % kWidth) * kGroup;
      float o = 0.0f;
      for (int32_t c : cols) {
        const float wq = static_cast<float>(
            static_cast<int32_t>(
                lane[(c / kGroup) * kGroupBytes + c % kGroup]) -
            128);
        if (w.group_size > 0) {
          const float d =
              wq * w.scales[ScaleIndex(j, c / w.group_size, num_groups)];
          o = std::fma(x[i * k + c], d, o);
        } else {
          o = std::fma(x[i * k + c], wq, o);
        }
      }
      out[i * m + j] = w.group_size > 0
                           ? out[i * m + j] + o
                           : std::fma(o, w.scales[j], out[i * m + j]);
    }
  });
}

}  // namespace strata::cpu
