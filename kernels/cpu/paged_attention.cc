#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kernels/cpu/simd.h"

namespace strata::cpu {
namespace {

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float, const float*, int64_t, float*);

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

// The attention of the query heads sharing one kv head, over num_keys keys.
// Written once and instantiated per ISA with that ISA's dot and axpy.
template <DotFn Dot, AxpyFn Axpy>
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
  // Softmax per head: max, exp and a sequential sum in key order.
  for (int64_t h = 0; h < group; ++h) {
    float* s = a.scores + h * n;
    const float max = *std::max_element(s, s + n);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      s[j] = std::exp(s[j] - max);
      sum += s[j];
    }
    const float inv_sum = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) s[j] *= inv_sum;
    std::fill(a.out + h * hd, a.out + (h + 1) * hd, 0.0f);
  }
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
  AttendBody<internal::DotScalar, internal::AxpyScalar>(a);
}
#if STRATA_CPU_X86
STRATA_TARGET_AVX2 void AttendAvx2(const AttendArgs& a) {
  AttendBody<internal::DotAvx2, internal::AxpyAvx2>(a);
}
STRATA_TARGET_AVX512 void AttendAvx512(const AttendArgs& a) {
  AttendBody<internal::DotAvx512, internal::AxpyAvx512>(a);
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
  std::vector<TokenRef> tokens;
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
