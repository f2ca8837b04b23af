// Decode attention that streams the paged KV cache once (flash-decoding with
// GQA grouping). LaunchPagedAttentionDecode (paged_attention.h) uses it for
// every geometry it supports and the per-head kernel otherwise.
//
// One CTA per (decode row, kv head, KV split) computes every query head of
// the kv head's GQA group (up to kMaxGroupedHeads per CTA; larger groups take
// several CTAs per kv head), so each cached K/V byte is read from memory once
// per step, with 16-byte loads of f16/bf16 rows. The split count is chosen per
// launch from the number of rows, kv heads and SMs and the longest context
// (PlanDecode), so one long sequence still fills the GPU and a large batch
// does not pay for a merge it does not need.
#ifndef STRATA_KERNELS_CUDA_DECODE_ATTENTION_H_
#define STRATA_KERNELS_CUDA_DECODE_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/paged_attention.h"

namespace strata::cuda {

inline constexpr int32_t kMaxGroupedHeads = 8;      // query heads per CTA
inline constexpr int32_t kDecodeSplitQuantum = 64;  // keys_per_split step
inline constexpr int32_t kMinKeysPerSplit = 128;    // never split finer

// How one decode launch is cut. A row of context c uses ceil(c /
// keys_per_split) of the max_splits CTAs along z; when that is more than one
// its partials are merged by a second kernel.
struct DecodePlan {
  bool supported = false;      // the grouped kernel handles this geometry
  int32_t heads_per_cta = 1;   // 1, 4 or 8 (the group, rounded up)
  int32_t head_chunks = 1;     // CTAs per kv head: ceil(group / heads_per_cta)
  int32_t keys_per_split = 0;  // multiple of kDecodeSplitQuantum
  int32_t max_splits = 1;
};

// Pure host logic (tested without a GPU). supported: cache f16 or bf16,
// head_dim 64, 128 or 256, block_size a power of two. Splits: enough CTAs
// for about four per SM (ctas = num_rows * num_kv_heads * head_chunks), but
// no split shorter than kMinKeysPerSplit keys.
DecodePlan PlanDecode(const AttentionGeometry& g, int64_t num_rows,
                      int64_t max_context, int num_sms);

// Workspace of a plan: partials [num_rows, num_heads, max_splits,
// head_dim + 2] f32 when max_splits > 1, else 0.
size_t GroupedDecodeWorkspaceBytes(const AttentionGeometry& g,
                                   const DecodePlan& plan, int64_t num_rows);

// As LaunchPagedAttentionDecode, with a plan from PlanDecode (supported).
cudaError_t LaunchGroupedDecode(const AttentionGeometry& g,
                                const DecodePlan& plan, const float* q,
                                const void* k_cache, const void* v_cache,
                                const int32_t* block_tables,
                                const DecodeRow* rows, int64_t num_rows,
                                void* workspace, float* out,
                                cudaStream_t stream);

// Merges the partials of the decode rows split over several CTAs (rows
// whose context exceeds keys_per_split) into out; rows with one split are
// left alone. partials: [num_rows, num_heads, max_splits, head_dim + 2] f32,
// per split the unnormalized sum of p * v, then max (log2 units) and sum of p.
cudaError_t LaunchDecodeCombine(const AttentionGeometry& g,
                                int32_t keys_per_split, const DecodeRow* rows,
                                int64_t num_rows, int32_t max_splits,
                                const float* partials, float* out,
                                cudaStream_t stream);

// The current device's SM count (cached per device; 1 if unknown).
int CurrentDeviceSmCount();

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_DECODE_ATTENTION_H_
