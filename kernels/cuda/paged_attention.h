// Paged KV cache writes and attention on the GPU.
//
// Cache layout (as on the CPU, kernels/cpu/paged_attention.h), per layer:
//   cache [num_blocks, num_kv_heads, block_size, head_dim] of cache_type
// Block tables are flattened into one device array; each query row or tile
// names the offset of its sequence's table in it.
//
// Attention kernels:
//  * Decode (one new token per sequence, or any single row), grouped
//    (decode_attention.h, for f16/bf16 caches with head_dim 64/128/256 and
//    power-of-two blocks): one CTA per (row, kv head, KV split) serves the
//    whole GQA group, so the cache is streamed once; the split count follows
//    the batch, the context and the SM count, so a row's rounding can depend
//    on the rest of the batch (the CUDA backend is not batch invariant).
//  * Decode, per head (every other geometry): one CTA per (row, query head,
//    split of kSplitKeys keys); a row whose context is longer than kSplitKeys
//    is split over several CTAs whose partial (max, sum, acc) are merged by a
//    second kernel (flash-decoding).
//  * Prefill (a chunk of new tokens of one sequence): one CTA per (tile of
//    kPrefillTile query rows, query head); K/V tiles of the cached prefix and
//    of the chunk are staged in shared memory once per tile and reused by
//    every query row of the tile (flash-attention style online softmax),
//    causal within the chunk.
#ifndef STRATA_KERNELS_CUDA_PAGED_ATTENTION_H_
#define STRATA_KERNELS_CUDA_PAGED_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/dtype.h"

namespace strata::cuda {

inline constexpr int32_t kSplitKeys = 512;   // keys per decode split
inline constexpr int32_t kPrefillTile = 16;  // query rows per prefill CTA
inline constexpr int32_t kMaxHeadDim = 256;

struct AttentionGeometry {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // divides num_heads
  int32_t head_dim = 0;      // even, <= kMaxHeadDim
  int32_t block_size = 0;
  float scale = 1.0f;
  DType cache_type = DType::kF16;
};

// One query row for the decode kernel.
struct DecodeRow {
  int32_t row = 0;           // row in q / out
  int32_t position = 0;      // attends keys [0, position]
  int32_t table_offset = 0;  // its block table in block_tables
};

// Up to kPrefillTile consecutive new tokens of one sequence.
struct PrefillTile {
  int32_t first_row = 0;       // row in q / out of the tile's first token
  int32_t num_rows = 0;        // 1..kPrefillTile
  int32_t first_position = 0;  // position of the tile's first token
  int32_t table_offset = 0;
};

// Stores row i of k and v at cache slot slots[i].
//   k, v: [n, num_kv_heads * head_dim] f32; slots: [n] device
cudaError_t LaunchWriteKv(const AttentionGeometry& g, const float* k,
                          const float* v, const int32_t* slots, int64_t n,
                          void* k_cache, void* v_cache, cudaStream_t stream);

// Which decode kernel LaunchPagedAttentionDecode runs: kAuto is the grouped
// one where it applies; the others are for benchmarks and tests side by side.
enum class DecodeKernelChoice { kAuto, kPerHead, kGrouped };

// Workspace bytes LaunchPagedAttentionDecode needs (any choice) for num_rows
// rows whose longest context is max_context keys.
size_t DecodeWorkspaceBytes(const AttentionGeometry& g, int64_t num_rows,
                            int64_t max_context);

//   q, out:       [*, num_heads * head_dim] f32 (rows named by `rows`)
//   block_tables: flat device array; rows: [num_rows] device
//   workspace:    DecodeWorkspaceBytes(...) bytes of device memory
cudaError_t LaunchPagedAttentionDecode(
    const AttentionGeometry& g, const float* q, const void* k_cache,
    const void* v_cache, const int32_t* block_tables, const DecodeRow* rows,
    int64_t num_rows, int64_t max_context, void* workspace, float* out,
    cudaStream_t stream, DecodeKernelChoice choice = DecodeKernelChoice::kAuto);

//   tiles: [num_tiles] device
cudaError_t LaunchPagedAttentionPrefill(
    const AttentionGeometry& g, const float* q, const void* k_cache,
    const void* v_cache, const int32_t* block_tables, const PrefillTile* tiles,
    int64_t num_tiles, float* out, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_PAGED_ATTENTION_H_
