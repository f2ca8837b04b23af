#include "kernels/cpu/bf16_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/panel_tasks.h"
#include "kernels/cpu/simd.h"

#if STRATA_CPU_X86
#define STRATA_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512bf16")))
#endif

namespace strata::cpu {
namespace {

constexpr int64_t kWidth = 16;  // output channels per panel
// Elements of one pair-row of a panel: 16 columns x 2 inputs.
constexpr int64_t kPairElems = 2 * kWidth;

int64_t PaddedK(int64_t k) { return (k + 1) / 2 * 2; }

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
float Widen(uint16_t h) { return FromBits(static_cast<uint32_t>(h) << 16); }

// Subnormal results become zero of the same sign (vdpbf16ps's FTZ).
float FlushSubnormal(float v) {
  return (Bits(v) & 0x7f800000u) == 0 ? FromBits(Bits(v) & 0x80000000u) : v;
}

struct Operands {
  const uint16_t* xb;  // [n][kp] x rounded to bfloat16
  const uint16_t* w;   // panels
  float* out;          // [n][m]
  int64_t m, kp;
};

void BlockScalar(const Operands& o, const internal::PanelBlock& b) {
  const int64_t pairs = o.kp / 2;
  for (int64_t i = b.row_begin; i < b.row_end; ++i) {
    const uint16_t* x = o.xb + i * o.kp;
    for (int64_t pj = b.panel_begin; pj < b.panel_end; ++pj) {
      const uint16_t* w = o.w + pj * pairs * kPairElems;
      const int64_t cols = std::min(kWidth, o.m - pj * kWidth);
      for (int64_t c = 0; c < cols; ++c) {
        float acc = 0.0f;
        for (int64_t q = 0; q < pairs; ++q) {
          const uint16_t* wq = w + q * kPairElems + 2 * c;
          acc = FlushSubnormal(acc + Widen(x[2 * q + 1]) * Widen(wq[1]));
          acc = FlushSubnormal(acc + Widen(x[2 * q]) * Widen(wq[0]));
        }
        o.out[i * o.m + pj * kWidth + c] = acc;
      }
    }
  }
}

void RoundRowScalar(const float* x, int64_t k, uint16_t* xb) {
  for (int64_t p = 0; p < k; ++p) xb[p] = RoundToBf16(x[p]);
  if (k % 2 != 0) xb[k] = 0;
}

#if STRATA_CPU_X86

STRATA_TARGET_AVX512_BF16 void RoundRowAvx512(const float* x, int64_t k,
                                              uint16_t* xb) {
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + p));
    std::memcpy(xb + p, &h, sizeof(h));
  }
  for (; p < k; ++p) xb[p] = RoundToBf16(x[p]);
  if (k % 2 != 0) xb[k] = 0;
}

// R rows x C panels, R * C accumulators; each weight load feeds R
// vdpbf16ps, each broadcast pair of x feeds C.
template <int R, int C>
STRATA_TARGET_AVX512_BF16 void TileAvx512(const Operands& o, int64_t row,
                                          int64_t panel) {
  const int64_t pairs = o.kp / 2;
  const uint16_t* w = o.w + panel * pairs * kPairElems;
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t q = 0; q < pairs; ++q) {
    __m512bh wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      wv[c] = reinterpret_cast<__m512bh>(
          _mm512_loadu_si512(w + (c * pairs + q) * kPairElems));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, o.xb + (row + r) * o.kp + 2 * q, sizeof(pair));
      const __m512bh xv =
          reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const int64_t pj = panel + c;
    const __mmask16 mask =
        internal::TailMaskAvx512(std::min(kWidth, o.m - pj * kWidth));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(o.out + (row + r) * o.m + pj * kWidth, mask,
                            acc[r][c]);
    }
  }
}

// The 8 x 3 tiles for internal::RunTiles8x3.
template <int R, int C>
struct Avx512Tile {
  STRATA_TARGET_AVX512_BF16 static void Run(const Operands& o, int64_t row,
                                            int64_t panel) {
    TileAvx512<R, C>(o, row, panel);
  }
};

#endif  // STRATA_CPU_X86

}  // namespace

bool Bf16DotSupported() {
#if STRATA_CPU_X86
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

uint16_t RoundToBf16(float v) {
  const uint32_t bits = Bits(v);
  if (std::isnan(v)) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  if ((bits & 0x7f800000u) == 0) return static_cast<uint16_t>(bits >> 31 << 15);
  return static_cast<uint16_t>(
      (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

int64_t Bf16PairPackedSize(int64_t m, int64_t k) {
  return (m + kWidth - 1) / kWidth * kWidth * PaddedK(k);
}

void PackWeightBf16Pairs(const float* w, int64_t m, int64_t k,
                         uint16_t* packed) {
  const int64_t pairs = PaddedK(k) / 2;
  const int64_t m_pad = (m + kWidth - 1) / kWidth * kWidth;
  for (int64_t j = 0; j < m_pad; ++j) {
    uint16_t* panel = packed + (j / kWidth) * pairs * kPairElems;
    for (int64_t p = 0; p < 2 * pairs; ++p) {
      const float v = j < m && p < k ? w[j * k + p] : 0.0f;
      panel[(p / 2) * kPairElems + (j % kWidth) * 2 + p % 2] = RoundToBf16(v);
    }
  }
}

void Bf16MatMul(const KernelContext& ctx, bool avx512, const float* x,
                const uint16_t* packed, int64_t n, int64_t m, int64_t k,
                float* out) {
  if (n <= 0 || m <= 0) return;
  const int64_t kp = PaddedK(k);
  thread_local std::vector<uint16_t> xb;
  xb.resize(static_cast<size_t>(n * kp));
  uint16_t* xb_data = xb.data();
  const KernelContext round_ctx =
      n * k < (1 << 16) ? KernelContext{ctx.isa, nullptr} : ctx;
  round_ctx.ParallelFor(n, [&](int64_t i) {
#if STRATA_CPU_X86
    if (avx512) {
      RoundRowAvx512(x + i * k, k, xb_data + i * kp);
      return;
    }
#endif
    RoundRowScalar(x + i * k, k, xb_data + i * kp);
  });
  const Operands o{xb_data, packed, out, m, kp};
  internal::ForEachPanelBlock(
      ctx, n, (m + kWidth - 1) / kWidth, n * m * k / 2,
      [&](const internal::PanelBlock& b) {
#if STRATA_CPU_X86
        if (avx512) {
          internal::RunTiles8x3<Avx512Tile>(o, b);
          return;
        }
#endif
        BlockScalar(o, b);
      });
}

}  // namespace strata::cpu
