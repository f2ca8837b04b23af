#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/simd.h"

namespace strata::cpu {
namespace {

using internal::DotScalar;

// Output rows x columns handled by one task (a rectangle of out).
struct Block {
  int64_t row_begin, row_end, col_begin, col_end;
};

void BlockScalar(const float* x, const float* w, int64_t m, int64_t k,
                 const Block& b, float* out) {
  for (int64_t i = b.row_begin; i < b.row_end; ++i) {
    for (int64_t j = b.col_begin; j < b.col_end; ++j) {
      out[i * m + j] = DotScalar(x + i * k, w + j * k, k);
    }
  }
}

#if STRATA_CPU_X86

// R rows of x times C rows of W; every output is one accumulator register
// run over k in lane-sized chunks, then a masked tail, then a horizontal sum
// (exactly DotAvx2 per output).
template <int R, int C>
STRATA_TARGET_AVX2 inline void TileAvx2(const float* x, const float* w,
                                        int64_t k, float* out, int64_t ldo) {
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    __m256 wv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) wv[c] = _mm256_loadu_ps(w + c * k + p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * k + p);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (p < k) {
    const __m256i mask = internal::TailMaskAvx2(k - p);
    __m256 wv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) wv[c] = _mm256_maskload_ps(w + c * k + p, mask);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_maskload_ps(x + r * k + p, mask);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      out[r * ldo + c] = internal::HorizontalSumAvx2(acc[r][c]);
    }
  }
}

// Walks one block with R-row tiles, C-column tiles and single-column tiles
// for the remainder.
template <int R, int C>
STRATA_TARGET_AVX2 void RowTileAvx2(const float* x, const float* w, int64_t m,
                                    int64_t k, int64_t i, const Block& b,
                                    float* out) {
  int64_t j = b.col_begin;
  for (; j + C <= b.col_end; j += C) {
    TileAvx2<R, C>(x + i * k, w + j * k, k, out + i * m + j, m);
  }
  for (; j < b.col_end; ++j) {
    TileAvx2<R, 1>(x + i * k, w + j * k, k, out + i * m + j, m);
  }
}

STRATA_TARGET_AVX2 void BlockAvx2(const float* x, const float* w, int64_t m,
                                  int64_t k, const Block& b, float* out) {
  int64_t i = b.row_begin;
  for (; i + 4 <= b.row_end; i += 4) RowTileAvx2<4, 2>(x, w, m, k, i, b, out);
  switch (b.row_end - i) {
    case 3:
      RowTileAvx2<3, 3>(x, w, m, k, i, b, out);
      break;
    case 2:
      RowTileAvx2<2, 4>(x, w, m, k, i, b, out);
      break;
    case 1:
      RowTileAvx2<1, 6>(x, w, m, k, i, b, out);
      break;
    default:
      break;
  }
}

template <int R, int C>
STRATA_TARGET_AVX512 inline void TileAvx512(const float* x, const float* w,
                                            int64_t k, float* out,
                                            int64_t ldo) {
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    __m512 wv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_ps(w + c * k + p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * k + p);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (p < k) {
    const __mmask16 mask = internal::TailMaskAvx512(k - p);
    __m512 wv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      wv[c] = _mm512_maskz_loadu_ps(mask, w + c * k + p);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + r * k + p);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      out[r * ldo + c] = internal::HorizontalSumAvx512(acc[r][c]);
    }
  }
}

template <int R, int C>
STRATA_TARGET_AVX512 void RowTileAvx512(const float* x, const float* w,
                                        int64_t m, int64_t k, int64_t i,
                                        const Block& b, float* out) {
  int64_t j = b.col_begin;
  for (; j + C <= b.col_end; j += C) {
    TileAvx512<R, C>(x + i * k, w + j * k, k, out + i * m + j, m);
  }
  for (; j < b.col_end; ++j) {
    TileAvx512<R, 1>(x + i * k, w + j * k, k, out + i * m + j, m);
  }
}

STRATA_TARGET_AVX512 void BlockAvx512(const float* x, const float* w, int64_t m,
                                      int64_t k, const Block& b, float* out) {
  int64_t i = b.row_begin;
  for (; i + 4 <= b.row_end; i += 4) RowTileAvx512<4, 4>(x, w, m, k, i, b, out);
  switch (b.row_end - i) {
    case 3:
      RowTileAvx512<3, 6>(x, w, m, k, i, b, out);
      break;
    case 2:
      RowTileAvx512<2, 8>(x, w, m, k, i, b, out);
      break;
    case 1:
      RowTileAvx512<1, 8>(x, w, m, k, i, b, out);
      break;
    default:
      break;
  }
}

#endif  // STRATA_CPU_X86

// Keep a column block of W (block_cols * k floats) within about half of L2.
constexpr int64_t kWeightBlockBytes = 256 << 10;
// Rows of x per task: bounds the x slice a task re-reads per column tile.
constexpr int64_t kRowBlock = 64;

}  // namespace

void MatMul(const KernelContext& ctx, const float* x, const float* w, int64_t n,
            int64_t m, int64_t k, float* out) {
  if (n <= 0 || m <= 0) return;
  if (k <= 0) {
    std::fill(out, out + n * m, 0.0f);
    return;
  }
  const int64_t row_block = std::min(n, kRowBlock);
  const int64_t num_row_blocks = (n + row_block - 1) / row_block;
  int64_t col_block =
      std::clamp<int64_t>(kWeightBlockBytes / (k * 4), 16, 512) / 8 * 8;
  // Enough tasks for the dynamic scheduler to balance the threads.
  const int64_t min_tasks = 4 * static_cast<int64_t>(ctx.num_threads());
  while (col_block > 16 &&
         num_row_blocks * ((m + col_block - 1) / col_block) < min_tasks) {
    col_block = std::max<int64_t>(16, col_block / 2 / 8 * 8);
  }
  const int64_t num_col_blocks = (m + col_block - 1) / col_block;
  const Isa isa = ctx.isa;
  const KernelContext run_ctx = ctx.ForMacs(n * m * k);
  run_ctx.ParallelFor(num_row_blocks * num_col_blocks, [&](int64_t task) {
    const int64_t rb = task / num_col_blocks;
    const int64_t cb = task % num_col_blocks;
    const Block b{rb * row_block, std::min(n, (rb + 1) * row_block),
                  cb * col_block, std::min(m, (cb + 1) * col_block)};
    switch (isa) {
#if STRATA_CPU_X86
      case Isa::kAvx512:
        BlockAvx512(x, w, m, k, b, out);
        return;
      case Isa::kAvx2:
        BlockAvx2(x, w, m, k, b, out);
        return;
#endif
      default:
        BlockScalar(x, w, m, k, b, out);
        return;
    }
  });
}

}  // namespace strata::cpu
