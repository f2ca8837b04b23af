#include "kernels/cpu/packed_matmul.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/cpu/panel_tasks.h"
#include "kernels/cpu/simd.h"

namespace strata::cpu {
namespace {

using Block = internal::PanelBlock;

// What every variant needs to address x, the panels and out. W is the
// panels' element: float, or uint16_t holding the upper half of a float
// (bfloat16), which widens to the same float exactly.
template <typename W>
struct Operands {
  const float* x;
  const W* packed;
  float* out;
  int64_t m, k;
  // Store out + sum rather than sum (PackedMatMulAdd): the sum is the same
  // chain from 0, so the result is PackedMatMul's plus out, bit for bit.
  bool accumulate = false;
};

inline float ToFloat(float w) { return w; }
inline float ToFloat(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename W>
void BlockScalar(const Operands<W>& o, const Block& b) {
  for (int64_t i = b.row_begin; i < b.row_end; ++i) {
    const float* xi = o.x + i * o.k;
    for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
      const W* panel = o.packed + pj * o.k * kPanelWidth;
      const int64_t cols = std::min(kPanelWidth, o.m - pj * kPanelWidth);
      for (int64_t c = 0; c < cols; ++c) {
        float acc = 0.0f;
        for (int64_t p = 0; p < o.k; ++p) {
          acc = std::fma(xi[p], ToFloat(panel[p * kPanelWidth + c]), acc);
        }
        float& dst = o.out[i * o.m + pj * kPanelWidth + c];
        dst = o.accumulate ? dst + acc : acc;
      }
    }
  }
}

#if STRATA_CPU_X86

// 16 panel columns as floats.
STRATA_TARGET_AVX512 inline __m512 LoadAvx512(const float* w) {
  return _mm512_loadu_ps(w);
}
STRATA_TARGET_AVX512 inline __m512 LoadAvx512(const uint16_t* w) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
// 8 panel columns as floats.
STRATA_TARGET_AVX2 inline __m256 LoadAvx2(const float* w) {
  return _mm256_loadu_ps(w);
}
STRATA_TARGET_AVX2 inline __m256 LoadAvx2(const uint16_t* w) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

// How far ahead of its panel reads a decode tile prefetches. Measured on
// the 155M bench model at batch 1 (Zen 4, 2 threads, strata-engine-bench):
// none 171-182 tok/s, 640 B 187, 1 KiB 195, 2 KiB 215, 3 KiB 206, 4 KiB
// 202 (alternating runs; docs/engine.md).
constexpr int kPrefetchBytes = 2048;

// R rows of x times C panels: R * C accumulators, each one output vector.
template <int R, int C, typename W>
STRATA_TARGET_AVX512 inline void TileAvx512(const Operands<W>& o, int64_t row,
                                            int64_t panel) {
  const int64_t k = o.k;
  const float* x = o.x + row * k;
  const W* w = o.packed + panel * k * kPanelWidth;
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; ++p) {
    __m512 wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      if constexpr (R <= 2) {
        // Few rows (decode) stream the panels from DRAM with little work
        // per byte: ask for the lines kPrefetchBytes ahead of each of the C
        // panel streams, which the hardware prefetcher alone does not keep
        // far enough ahead of.
        _mm_prefetch(reinterpret_cast<const char*>(
                         w + (c * k + p) * kPanelWidth) + kPrefetchBytes,
                     _MM_HINT_T0);
      }
      wv[c] = LoadAvx512(w + (c * k + p) * kPanelWidth);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * k + p]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        acc[r][c] = _mm512_fmadd_ps(xb, wv[c], acc[r][c]);
      }
    }
  }
  const int64_t last_cols =
      std::min(kPanelWidth, o.m - (panel + C - 1) * kPanelWidth);
  const __mmask16 last_mask = internal::TailMaskAvx512(last_cols);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* dst = o.out + (row + r) * o.m + panel * kPanelWidth;
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __mmask16 mask = c + 1 < C ? __mmask16{0xffff} : last_mask;
      if (o.accumulate) {
        acc[r][c] = _mm512_add_ps(
            _mm512_maskz_loadu_ps(mask, dst + c * kPanelWidth), acc[r][c]);
      }
      if (c + 1 < C) {
        _mm512_storeu_ps(dst + c * kPanelWidth, acc[r][c]);
      } else {
        _mm512_mask_storeu_ps(dst + c * kPanelWidth, last_mask, acc[r][c]);
      }
    }
  }
}

// PackedMatMulPair's tile: R0 rows of x0 against panel w0 and R1 rows of x1
// against w1, one accumulator per row, each TileAvx512<R, 1>'s chain.
struct PairOperands {
  const float* x0;
  const float* w0;
  float* out0;
  const float* x1;
  const float* w1;
  float* out1;
  int64_t m, k;
};

template <int R0, int R1>
STRATA_TARGET_AVX512 void PairTileAvx512(const PairOperands& o) {
  const int64_t k = o.k;
  __m512 acc[R0 + R1];
#pragma GCC unroll 16
  for (int r = 0; r < R0 + R1; ++r) acc[r] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; ++p) {
    const __m512 w0 = _mm512_loadu_ps(o.w0 + p * kPanelWidth);
    const __m512 w1 = _mm512_loadu_ps(o.w1 + p * kPanelWidth);
#pragma GCC unroll 8
    for (int r = 0; r < R0; ++r) {
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(o.x0[r * k + p]), w0, acc[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R1; ++r) {
      acc[R0 + r] =
          _mm512_fmadd_ps(_mm512_set1_ps(o.x1[r * k + p]), w1, acc[R0 + r]);
    }
  }
  const __mmask16 mask = internal::TailMaskAvx512(o.m);
#pragma GCC unroll 8
  for (int r = 0; r < R0; ++r) {
    _mm512_mask_storeu_ps(o.out0 + r * o.m, mask, acc[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R1; ++r) {
    _mm512_mask_storeu_ps(o.out1 + r * o.m, mask, acc[R0 + r]);
  }
}

// PairTileAvx512<R0, R1> at [(R0 - 1) * kMaxPairRows + R1 - 1], for R0 and
// R1 in [1, kMaxPairRows] (the caller keeps R0 + R1 <= 8).
constexpr int kMaxPairRows = 7;
using PairTile = void (*)(const PairOperands&);
template <int... I>
constexpr std::array<PairTile, sizeof...(I)> MakePairTiles(
    std::integer_sequence<int, I...>) {
  return {&PairTileAvx512<I / kMaxPairRows + 1, I % kMaxPairRows + 1>...};
}
constexpr std::array<PairTile, kMaxPairRows* kMaxPairRows> kPairTiles =
    MakePairTiles(
        std::make_integer_sequence<int, kMaxPairRows * kMaxPairRows>());

// The 8 x 3 tiles for internal::RunTiles8x3, per panel element type: 24 of
// the 32 vector registers accumulate, 3 hold W and one the broadcast, so
// every W load feeds 8 multiply-adds.
template <typename W>
struct Avx512Tiles {
  template <int R, int C>
  struct Tile {
    STRATA_TARGET_AVX512 static void Run(const Operands<W>& o, int64_t row,
                                         int64_t panel) {
      TileAvx512<R, C>(o, row, panel);
    }
  };
};

// AVX2: a panel is two 8-lane halves; R rows x 1 panel = 2R accumulators of
// the 16 registers.
template <int R, typename W>
STRATA_TARGET_AVX2 inline void TileAvx2(const Operands<W>& o, int64_t row,
                                        int64_t panel) {
  const int64_t k = o.k;
  const float* x = o.x + row * k;
  const W* w = o.packed + panel * k * kPanelWidth;
  __m256 lo[R], hi[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    lo[r] = _mm256_setzero_ps();
    hi[r] = _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < k; ++p) {
    const __m256 wl = LoadAvx2(w + p * kPanelWidth);
    const __m256 wh = LoadAvx2(w + p * kPanelWidth + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_set1_ps(x[r * k + p]);
      lo[r] = _mm256_fmadd_ps(xb, wl, lo[r]);
      hi[r] = _mm256_fmadd_ps(xb, wh, hi[r]);
    }
  }
  const int64_t cols = std::min(kPanelWidth, o.m - panel * kPanelWidth);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* dst = o.out + (row + r) * o.m + panel * kPanelWidth;
    if (cols == kPanelWidth) {
      if (o.accumulate) {
        lo[r] = _mm256_add_ps(_mm256_loadu_ps(dst), lo[r]);
        hi[r] = _mm256_add_ps(_mm256_loadu_ps(dst + 8), hi[r]);
      }
      _mm256_storeu_ps(dst, lo[r]);
      _mm256_storeu_ps(dst + 8, hi[r]);
    } else {
      alignas(32) float tmp[kPanelWidth];
      _mm256_store_ps(tmp, lo[r]);
      _mm256_store_ps(tmp + 8, hi[r]);
      for (int64_t c = 0; c < cols; ++c) {
        dst[c] = o.accumulate ? dst[c] + tmp[c] : tmp[c];
      }
    }
  }
}

constexpr int kRowsAvx2 = 6;

template <typename W>
STRATA_TARGET_AVX2 void BlockAvx2(const Operands<W>& o, const Block& b) {
  for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
    for (int64_t i = b.row_begin; i < b.row_end; i += kRowsAvx2) {
      switch (std::min<int64_t>(kRowsAvx2, b.row_end - i)) {
        case 6:
          TileAvx2<6>(o, i, pj);
          break;
        case 5:
          TileAvx2<5>(o, i, pj);
          break;
        case 4:
          TileAvx2<4>(o, i, pj);
          break;
        case 3:
          TileAvx2<3>(o, i, pj);
          break;
        case 2:
          TileAvx2<2>(o, i, pj);
          break;
        default:
          TileAvx2<1>(o, i, pj);
          break;
      }
    }
  }
}

#endif  // STRATA_CPU_X86

template <typename W, typename Convert>
void Pack(const float* w, int64_t m, int64_t k, W* packed, Convert convert) {
  const int64_t num_panels = (m + kPanelWidth - 1) / kPanelWidth;
  for (int64_t pj = 0; pj < num_panels; ++pj) {
    W* panel = packed + pj * k * kPanelWidth;
    for (int64_t c = 0; c < kPanelWidth; ++c) {
      const int64_t row = pj * kPanelWidth + c;
      for (int64_t p = 0; p < k; ++p) {
        panel[p * kPanelWidth + c] = convert(row < m ? w[row * k + p] : 0.0f);
      }
    }
  }
}

uint32_t Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

template <typename W>
void Multiply(const KernelContext& ctx, const float* x, const W* packed,
              int64_t n, int64_t m, int64_t k, float* out,
              bool accumulate = false) {
  if (n <= 0 || m <= 0) return;
  if (k <= 0) {
    if (!accumulate) std::fill(out, out + n * m, 0.0f);
    return;
  }
  const int64_t num_panels = (m + kPanelWidth - 1) / kPanelWidth;
  const Operands<W> operands{x, packed, out, m, k, accumulate};
  const Isa isa = ctx.isa;
  internal::ForEachPanelBlock(ctx, n, num_panels, n * m * k, [&](const Block& b) {
    switch (isa) {
#if STRATA_CPU_X86
      case Isa::kAvx512:
        internal::RunTiles8x3<Avx512Tiles<W>::template Tile>(operands, b);
        return;
      case Isa::kAvx2:
        BlockAvx2(operands, b);
        return;
#endif
      default:
        BlockScalar(operands, b);
        return;
    }
  });
}

}  // namespace

int64_t PackedWeightSize(int64_t m, int64_t k) {
  return (m + kPanelWidth - 1) / kPanelWidth * kPanelWidth * k;
}

void PackWeight(const float* w, int64_t m, int64_t k, float* packed) {
  Pack(w, m, k, packed, [](float v) { return v; });
}

bool IsBf16Exact(const float* w, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if ((Bits(w[i]) & 0xffffu) != 0) return false;
  }
  return true;
}

void PackWeightBf16(const float* w, int64_t m, int64_t k, uint16_t* packed) {
  Pack(w, m, k, packed,
       [](float v) { return static_cast<uint16_t>(Bits(v) >> 16); });
}

void PackedMatMul(const KernelContext& ctx, const float* x, const float* packed,
                  int64_t n, int64_t m, int64_t k, float* out) {
  Multiply(ctx, x, packed, n, m, k, out);
}

void PackedMatMul(const KernelContext& ctx, const float* x,
                  const uint16_t* packed, int64_t n, int64_t m, int64_t k,
                  float* out) {
  Multiply(ctx, x, packed, n, m, k, out);
}

void PackedMatMulPair(Isa isa, const float* x0, int64_t n0,
                      const float* packed0, const float* x1, int64_t n1,
                      const float* packed1, int64_t m, int64_t k, float* out0,
                      float* out1) {
#if STRATA_CPU_X86
  if (isa == Isa::kAvx512 && n0 >= 1 && n1 >= 1 && n0 + n1 <= 8 && m >= 1 &&
      m <= kPanelWidth && k >= 1) {
    kPairTiles[(n0 - 1) * kMaxPairRows + n1 - 1](
        PairOperands{x0, packed0, out0, x1, packed1, out1, m, k});
    return;
  }
#endif
  const KernelContext inline_ctx{isa, nullptr};
  Multiply(inline_ctx, x0, packed0, n0, m, k, out0);
  Multiply(inline_ctx, x1, packed1, n1, m, k, out1);
}

void PackedMatMulAdd(const KernelContext& ctx, const float* x,
                     const float* packed, int64_t n, int64_t m, int64_t k,
                     float* out) {
  Multiply(ctx, x, packed, n, m, k, out, /*accumulate=*/true);
}

}  // namespace strata::cpu
