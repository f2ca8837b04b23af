// Paged KV cache writes and causal attention over paged K/V.
//
// KV cache layout, per layer and separately for K and V:
//   cache [num_blocks, num_kv_heads, block_size, head_dim]
// Token slot s = block * block_size + offset. A sequence's block table maps
// its logical block i (positions [i*block_size, (i+1)*block_size)) to a
// physical block. Keeping one kv head's block_size keys contiguous makes the
// per-head key walk a contiguous read within each block.
//
// Attention: the new token at position p of a sequence attends to the keys
// at positions [0, p] of that sequence (its cached prefix plus the earlier
// new tokens of the same chunk, which WriteKvCache has already stored), so a
// prompt split into chunks sees exactly the same keys as a whole prefill.
// Query head h reads kv head h / (num_heads / num_kv_heads) (GQA).
//
// Batch invariance: each (token, head) output is computed by one task with
// scores in key order, a sequential sum over keys and the probability-
// weighted V accumulated in key order, all of which depend only on the
// number of keys, never on the batch or the threads.
#ifndef STRATA_KERNELS_CPU_PAGED_ATTENTION_H_
#define STRATA_KERNELS_CPU_PAGED_ATTENTION_H_

#include <cstdint>
#include <span>

#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

struct AttentionGeometry {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // divides num_heads
  int32_t head_dim = 0;
  int32_t block_size = 0;
  float scale = 1.0f;  // usually 1 / sqrt(head_dim)
};

// One sequence's new tokens in a flattened batch.
struct AttentionSequence {
  int32_t first_row = 0;       // row of its first new token in q / out
  int32_t num_tokens = 0;      // number of new tokens (rows)
  int32_t start_position = 0;  // position of its first new token
  // Physical block ids covering positions [0, start_position + num_tokens).
  std::span<const int32_t> block_table;
};

// Stores K and V of n tokens at their slots.
//   k, v:             [n, num_kv_heads * head_dim]
//   slots:            [n], block * block_size + offset, all in range
//   k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim]
void WriteKvCache(const KernelContext& ctx, const AttentionGeometry& geometry,
                  const float* k, const float* v,
                  std::span<const int32_t> slots, float* k_cache,
                  float* v_cache);

// Causal attention of every new token of every sequence.
//   q:                [num_rows, num_heads * head_dim]
//   k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim]
//   out:              [num_rows, num_heads * head_dim]
// Rows not covered by any sequence are left untouched. Block ids must be in
// range and tables long enough (the caller validates).
void PagedAttention(const KernelContext& ctx, const AttentionGeometry& geometry,
                    const float* q, const float* k_cache, const float* v_cache,
                    std::span<const AttentionSequence> sequences, float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_PAGED_ATTENTION_H_
