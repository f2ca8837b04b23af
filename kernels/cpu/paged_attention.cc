#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_exp.h"

namespace strata::cpu {
namespace {

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float, const float*, int64_t, float*);
// x[j] = exp(x[j] - shift), returns the sum (kernels/cpu/simd_exp.h).
using ExpSumFn = float (*)(float*, int64_t, float);

// Everything one (token, kv head) task needs.
struct AttendArgs {
  const AttentionGeometry* geometry;
  const float* q;        // [group, head_dim]: the query heads of this kv head
  const float* k_cache;  // [num_blocks, num_kv_heads, block_size, head_dim]
  const float* v_cache;
  std::span<const int32_t> block_table;
  int32_t kv_head;
  int32_t num_keys;  // keys at positions [0, num_keys)
  float* scores;     // scratch [group, num_keys]
  float* out;        // [group, head_dim]
};

// The largest of s[0, n), n >= 1, and x[j] *= scale over x[0, n): the
// plain forms, which a body may replace with vector ones of the same
// results (internal::MaxAvx512, ScaleAvx512; the scalar max is a chain of
// dependent maxss, a visible part of the wide body).
using MaxFn = float (*)(const float*, int64_t);
using ScaleFn = void (*)(float*, int64_t, float);
inline float MaxScalar(const float* s, int64_t n) {
  return *std::max_element(s, s + n);
}
inline void ScaleScalar(float* x, int64_t n, float scale) {
  for (int64_t j = 0; j < n; ++j) x[j] *= scale;
}

// Softmax of each of `rows` rows of n scores, in place: max, then the
// exponentials and their sum in simd_exp.h's 16-lane layout, whose forms
// give the same bits on every ISA (so every body gives the same
// probabilities for the same scores).
template <ExpSumFn ExpSum, MaxFn Max = MaxScalar, ScaleFn Scale = ScaleScalar>
inline __attribute__((always_inline)) void SoftmaxRows(float* scores,
                                                       int64_t rows,
                                                       int64_t n) {
  for (int64_t h = 0; h < rows; ++h) {
    float* s = scores + h * n;
    const float max = Max(s, n);
    const float sum = ExpSum(s, n, max);
    Scale(s, n, 1.0f / sum);
  }
}

// The attention of the query heads sharing one kv head, over num_keys keys.
// Written once and instantiated per ISA with that ISA's dot and axpy.
template <DotFn Dot, AxpyFn Axpy, ExpSumFn ExpSum>
inline __attribute__((always_inline)) void AttendBody(const AttendArgs& a) {
  const AttentionGeometry& g = *a.geometry;
  const int64_t group = g.num_heads / g.num_kv_heads;
  const int64_t hd = g.head_dim;
  const int64_t bs = g.block_size;
  const int64_t head_stride = bs * hd;  // one kv head within a block
  const int64_t block_stride = g.num_kv_heads * head_stride;
  const int64_t n = a.num_keys;
  // Scores in key order.
  for (int64_t j0 = 0; j0 < n; j0 += bs) {
    const int64_t block = a.block_table[j0 / bs];
    const float* keys =
        a.k_cache + block * block_stride + a.kv_head * head_stride;
    const int64_t count = std::min(bs, n - j0);
    for (int64_t j = 0; j < count; ++j) {
      for (int64_t h = 0; h < group; ++h) {
        a.scores[h * n + j0 + j] =
            Dot(a.q + h * hd, keys + j * hd, hd) * g.scale;
      }
    }
  }
  SoftmaxRows<ExpSum>(a.scores, group, n);
  std::fill(a.out, a.out + group * hd, 0.0f);
  // Probability-weighted values, in key order.
  for (int64_t j0 = 0; j0 < n; j0 += bs) {
    const int64_t block = a.block_table[j0 / bs];
    const float* values =
        a.v_cache + block * block_stride + a.kv_head * head_stride;
    const int64_t count = std::min(bs, n - j0);
    for (int64_t j = 0; j < count; ++j) {
      for (int64_t h = 0; h < group; ++h) {
        Axpy(a.scores[h * n + j0 + j], values + j * hd, hd, a.out + h * hd);
      }
    }
  }
}

void AttendScalar(const AttendArgs& a) {
  AttendBody<internal::DotScalar, internal::AxpyScalar,
             internal::ExpShiftSumScalar>(a);
}
#if STRATA_CPU_X86
STRATA_TARGET_AVX2 void AttendAvx2(const AttendArgs& a) {
  AttendBody<internal::DotAvx2, internal::AxpyAvx2, internal::ExpShiftSumAvx2>(
      a);
}
STRATA_TARGET_AVX512 void AttendAvx512(const AttendArgs& a) {
  AttendBody<internal::DotAvx512, internal::AxpyAvx512,
             internal::ExpShiftSumAvx512>(a);
}

// ---- AVX-512 for head_dim a multiple of 16 (up to 128) ----
//
// The generic body spends most of its time in per-key horizontal sums and in
// Axpy's load-add-store of the output for every key. This one computes 16
// keys' scores at once and reduces the 16 accumulators together (stages that
// pair the same lanes as HorizontalSumAvx512, so every score has exactly the
// bits DotAvx512 gives it), and keeps the output heads in registers across
// all keys (each lane the same fma chain in key order as AxpyAvx512). Results
// are bit-identical to AttendAvx512; only the speed differs.

// s[j] = HorizontalSumAvx512(acc[j]) for j < 16, as one vector.
STRATA_TARGET_AVX512 inline __m512 HorizontalSums16(const __m512 acc[16]) {
  // Lane i + lane i^8: pairs of keys, key 2m in lanes 0-7, 2m+1 in 8-15.
  __m512 r[8];
  for (int m = 0; m < 8; ++m) {
    const __m512 a = acc[2 * m], b = acc[2 * m + 1];
    r[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
                         _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  // Lane i + lane i^4: 128-bit chunk x of u[m] is key 4m + x.
  __m512 u[4];
  for (int m = 0; m < 4; ++m) {
    const __m512 a = r[2 * m], b = r[2 * m + 1];
    u[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88),
                         _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  // Within each chunk: lane 0 + lane 2 and lane 1 + lane 3.
  const __m512 x0 =
      _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 x1 =
      _mm512_add_ps(_mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
  // The two halves: lane 4c + p now holds the score of key 4p + c.
  const __m512 t =
      _mm512_add_ps(_mm512_shuffle_ps(x0, x1, _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_ps(x0, x1, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, t);
}

// ScaleScalar with the same products, 16 at a time.
STRATA_TARGET_AVX512 inline void ScaleAvx512(float* x, int64_t n, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    _mm512_storeu_ps(x + j, _mm512_mul_ps(_mm512_loadu_ps(x + j), vs));
  }
  const __mmask16 tail = internal::TailMaskAvx512(n - j);
  _mm512_mask_storeu_ps(x + j, tail,
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + j), vs));
}

// Scores of one head against `count` (<= 16) keys of one block, V vectors
// per key.
template <int V>
STRATA_TARGET_AVX512 inline void ScoresAvx512(const float* q, const float* keys,
                                              int64_t count, float scale,
                                              float* scores) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  if (count == 16) {
    for (int c = 0; c < V; ++c) {
      const __m512 qv = _mm512_loadu_ps(q + c * 16);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        acc[j] = _mm512_fmadd_ps(
            qv, _mm512_loadu_ps(keys + j * V * 16 + c * 16), acc[j]);
      }
    }
  } else {
    for (int c = 0; c < V; ++c) {
      const __m512 qv = _mm512_loadu_ps(q + c * 16);
      for (int64_t j = 0; j < count; ++j) {
        acc[j] = _mm512_fmadd_ps(
            qv, _mm512_loadu_ps(keys + j * V * 16 + c * 16), acc[j]);
      }
    }
  }
  const __m512 s = _mm512_mul_ps(HorizontalSums16(acc), _mm512_set1_ps(scale));
  _mm512_mask_storeu_ps(scores, internal::TailMaskAvx512(count), s);
}

// out[h] = sum_j p[h][j] v[j] for H heads at once, V vectors per head.
template <int V, int H>
STRATA_TARGET_AVX512 inline void WeightedValuesAvx512(const AttendArgs& a,
                                                      int64_t first_head) {
  const AttentionGeometry& g = *a.geometry;
  const int64_t hd = V * 16;
  const int64_t bs = g.block_size;
  const int64_t head_stride = bs * hd;
  const int64_t block_stride = g.num_kv_heads * head_stride;
  const int64_t n = a.num_keys;
  const float* p = a.scores + first_head * n;
  __m512 acc[H][V];
  for (int h = 0; h < H; ++h) {
    for (int c = 0; c < V; ++c) acc[h][c] = _mm512_setzero_ps();
  }
  for (int64_t j0 = 0; j0 < n; j0 += bs) {
    const int64_t block = a.block_table[j0 / bs];
    const float* values =
        a.v_cache + block * block_stride + a.kv_head * head_stride;
    const int64_t count = std::min(bs, n - j0);
    for (int64_t j = 0; j < count; ++j) {
#pragma GCC unroll 8
      for (int c = 0; c < V; ++c) {
        const __m512 vv = _mm512_loadu_ps(values + j * hd + c * 16);
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) {
          acc[h][c] =
              _mm512_fmadd_ps(_mm512_set1_ps(p[h * n + j0 + j]), vv, acc[h][c]);
        }
      }
    }
  }
  for (int h = 0; h < H; ++h) {
    for (int c = 0; c < V; ++c) {
      _mm512_storeu_ps(a.out + (first_head + h) * hd + c * 16, acc[h][c]);
    }
  }
}

// Output heads per pass: H * V accumulators within 24 of the 32 registers.
template <int V>
STRATA_TARGET_AVX512 void WeightedValuesAllHeadsAvx512(const AttendArgs& a,
                                                       int64_t group) {
  constexpr int kHeads = 24 / V;
  int64_t h = 0;
  for (; h + kHeads <= group; h += kHeads) {
    WeightedValuesAvx512<V, kHeads>(a, h);
  }
  // The remaining heads (fewer than kHeads) in one pass when they fit the
  // common GQA groups, else one at a time.
  switch (group - h) {
    case 0:
      return;
    case 2:
      if constexpr (kHeads > 2) return WeightedValuesAvx512<V, 2>(a, h);
      break;
    case 3:
      if constexpr (kHeads > 3) return WeightedValuesAvx512<V, 3>(a, h);
      break;
    case 4:
      if constexpr (kHeads > 4) return WeightedValuesAvx512<V, 4>(a, h);
      break;
    default:
      break;
  }
  for (; h < group; ++h) WeightedValuesAvx512<V, 1>(a, h);
}

template <int V>
STRATA_TARGET_AVX512 void AttendWideAvx512(const AttendArgs& a) {
  const AttentionGeometry& g = *a.geometry;
  const int64_t group = g.num_heads / g.num_kv_heads;
  const int64_t hd = V * 16;
  const int64_t bs = g.block_size;
  const int64_t head_stride = bs * hd;
  const int64_t block_stride = g.num_kv_heads * head_stride;
  const int64_t n = a.num_keys;
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    // 16 keys at a time, never across a block boundary (bs % 16 == 0).
    const int64_t block = a.block_table[j0 / bs];
    const float* keys = a.k_cache + block * block_stride +
                        a.kv_head * head_stride + (j0 % bs) * hd;
    const int64_t count = std::min<int64_t>(16, n - j0);
    for (int64_t h = 0; h < group; ++h) {
      ScoresAvx512<V>(a.q + h * hd, keys, count, g.scale,
                      a.scores + h * n + j0);
    }
  }
  SoftmaxRows<internal::ExpShiftSumAvx512, internal::MaxAvx512, ScaleAvx512>(
      a.scores, group, n);
  WeightedValuesAllHeadsAvx512<V>(a, group);
}

// The wide body applies when whole 16-key groups fit in a block and the head
// is a whole number of vectors.
bool WideAvx512Applies(const AttentionGeometry& g) {
  return g.block_size % 16 == 0 &&
         (g.head_dim == 64 || g.head_dim == 128 || g.head_dim == 32 ||
          g.head_dim == 96 || g.head_dim == 16);
}

STRATA_TARGET_AVX512 void AttendFastAvx512(const AttendArgs& a) {
  switch (a.geometry->head_dim) {
    case 16:
      return AttendWideAvx512<1>(a);
    case 32:
      return AttendWideAvx512<2>(a);
    case 64:
      return AttendWideAvx512<4>(a);
    case 96:
      return AttendWideAvx512<6>(a);
    default:
      return AttendWideAvx512<8>(a);
  }
}
#endif

}  // namespace

void WriteKvCache(const KernelContext& ctx, const AttentionGeometry& geometry,
                  const float* k, const float* v,
                  std::span<const int32_t> slots, float* k_cache,
                  float* v_cache) {
  const int64_t hd = geometry.head_dim;
  const int64_t bs = geometry.block_size;
  const int64_t kv_heads = geometry.num_kv_heads;
  const size_t head_bytes = static_cast<size_t>(hd) * sizeof(float);
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t block = slots[i] / bs;
    const int64_t offset = slots[i] % bs;
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t dst = ((block * kv_heads + h) * bs + offset) * hd;
      const int64_t src = (static_cast<int64_t>(i) * kv_heads + h) * hd;
      std::memcpy(k_cache + dst, k + src, head_bytes);
      std::memcpy(v_cache + dst, v + src, head_bytes);
    }
  }
}

void PagedAttention(const KernelContext& ctx, const AttentionGeometry& geometry,
                    const float* q, const float* k_cache, const float* v_cache,
                    std::span<const AttentionSequence> sequences, float* out) {
  // One task per (new token, kv head); tokens are listed sequence by sequence.
  struct TokenRef {
    int32_t sequence;
    int32_t token;
  };
  // Reused per call. The tasks below read it through this reference: a
  // thread_local named in them would be each worker's own.
  thread_local std::vector<TokenRef> token_scratch;
  std::vector<TokenRef>& tokens = token_scratch;
  tokens.clear();
  for (size_t s = 0; s < sequences.size(); ++s) {
    for (int32_t t = 0; t < sequences[s].num_tokens; ++t) {
      tokens.push_back({static_cast<int32_t>(s), t});
    }
  }
  const int64_t kv_heads = geometry.num_kv_heads;
  const int64_t group = geometry.num_heads / kv_heads;
  const int64_t width =
      static_cast<int64_t>(geometry.num_heads) * geometry.head_dim;
  // Small steps (short contexts) run on the calling thread; the split never
  // changes results.
  int64_t work = 0;
  for (const TokenRef& ref : tokens) {
    work += int64_t{sequences[ref.sequence].start_position} + ref.token + 1;
  }
  work *= int64_t{geometry.num_heads} * geometry.head_dim;
  constexpr int64_t kMinParallelWork = 1 << 16;
  const KernelContext run_ctx =
      work < kMinParallelWork ? KernelContext{ctx.isa, nullptr} : ctx;
  const Isa isa = ctx.isa;
#if STRATA_CPU_X86
  const bool wide = WideAvx512Applies(geometry);
#endif
  run_ctx.ParallelFor(
      static_cast<int64_t>(tokens.size()) * kv_heads, [&](int64_t task) {
        const TokenRef ref = tokens[task / kv_heads];
        const int32_t kv_head = static_cast<int32_t>(task % kv_heads);
        const AttentionSequence& seq = sequences[ref.sequence];
        const int64_t row = seq.first_row + ref.token;
        const int32_t num_keys = seq.start_position + ref.token + 1;
        thread_local std::vector<float> scores;
        if (static_cast<int64_t>(scores.size()) < group * num_keys) {
          scores.resize(group * num_keys);
        }
        const int64_t head_offset = kv_head * group * geometry.head_dim;
        const AttendArgs args{&geometry,
                              q + row * width + head_offset,
                              k_cache,
                              v_cache,
                              seq.block_table,
                              kv_head,
                              num_keys,
                              scores.data(),
                              out + row * width + head_offset};
        switch (isa) {
#if STRATA_CPU_X86
          case Isa::kAvx512:
            if (wide) return AttendFastAvx512(args);
            return AttendAvx512(args);
          case Isa::kAvx2:
            return AttendAvx2(args);
#endif
          default:
            return AttendScalar(args);
        }
      });
}

}  // namespace strata::cpu
