// Grouped, split-KV decode attention over the paged cache.
//
// Napkin bound. Decode attention reads every cached K and V element of every
// row once and does ~4 flops per element per query head of its group, so it
// is bandwidth-bound: bytes = 2 (K, V) * context * num_kv_heads * head_dim *
// 2 (f16/bf16) per row per layer. The benchmark shape (8 rows x 32k keys,
// 8 kv heads x 128 dims, block 16) is 1.07 GB: 224 us at the H200's 4.8 TB/s,
// 320 us at the H100's 3.35 TB/s; the issue's 60 % target is <= 373 us on the
// H200. The old per-query-head kernel read each K/V row once per query head
// (4x for GQA 32/8, from L2 at best) with 2-byte loads: 1.81 ms there.
// Per SM at 4.8 TB/s / 132 SMs ~ 18 B/cycle, one 128-dim key (512 B of K+V)
// is a ~28-cycle budget; for a group of 8 heads the work per key is ~64 warp
// FMA instructions (16 cycles on 4 schedulers) plus 16 shuffles (the
// shuffle unit does one warp instruction per cycle), so issue stays under the
// memory time, with a 2-key chunk per lane group to amortize the exponentials.
//
// Mapping: a CTA of 4 warps owns (row, kv head, head chunk, split). Each key
// row is head_dim * 2 bytes = kLanes lanes x 16 bytes; a warp holds 32 /
// kLanes "lane groups", each walking its own keys (consecutive groups read
// consecutive rows, so a warp's loads are contiguous within a cache block)
// with its own online softmax (exp2 domain: q is pre-scaled by log2 e). A
// group loads a chunk of kChunk keys' K and V at once (more bytes in flight),
// reduces each key's dot products over its lanes with xor shuffles, and
// rescales its accumulators once per chunk. At the end the groups' (m, l,
// acc) are merged through shared memory; rows with one split write the
// output, others their partials for DecodeCombineKernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/decode_attention_kernel.cuh"

namespace strata::cuda {
namespace {

template <typename T, int D>
void LaunchForGroup(const AttentionGeometry& g, const DecodePlan& plan,
                    const float* q, const void* k, const void* v,
                    const int32_t* tables, const DecodeRow* rows, int64_t n,
                    float* partials, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(n),
                  static_cast<unsigned>(g.num_kv_heads * plan.head_chunks),
                  static_cast<unsigned>(plan.max_splits));
  DispatchGroup(plan.heads_per_cta, [&](auto group) {
    GroupedDecodeKernel<T, D, decltype(group)::value>
        <<<grid, kDecodeThreads, 0, stream>>>(
            g, plan.keys_per_split, plan.head_chunks, BlockShift(g.block_size),
            q, static_cast<const T*>(k), static_cast<const T*>(v), tables, rows,
            partials, out);
  });
}

template <typename T>
void LaunchForDim(const AttentionGeometry& g, const DecodePlan& plan,
                  const float* q, const void* k, const void* v,
                  const int32_t* tables, const DecodeRow* rows, int64_t n,
                  float* partials, float* out, cudaStream_t stream) {
  switch (g.head_dim) {
    case 64:
      LaunchForGroup<T, 64>(g, plan, q, k, v, tables, rows, n, partials, out,
                            stream);
      break;
    case 128:
      LaunchForGroup<T, 128>(g, plan, q, k, v, tables, rows, n, partials, out,
                             stream);
      break;
    default:
      LaunchForGroup<T, 256>(g, plan, q, k, v, tables, rows, n, partials, out,
                             stream);
      break;
  }
}

}  // namespace

DecodePlan PlanDecode(const AttentionGeometry& g, int64_t num_rows,
                      int64_t max_context, int num_sms) {
  DecodePlan plan;
  const bool pow2_block =
      g.block_size > 0 && (g.block_size & (g.block_size - 1)) == 0;
  plan.supported =
      (g.cache_type == DType::kF16 || g.cache_type == DType::kBF16) &&
      (g.head_dim == 64 || g.head_dim == 128 || g.head_dim == 256) &&
      pow2_block && g.num_kv_heads > 0 && g.num_heads % g.num_kv_heads == 0;
  if (!plan.supported) return plan;
  const int32_t group = g.num_heads / g.num_kv_heads;
  plan.heads_per_cta = group == 1 ? 1 : group <= 4 ? 4 : kMaxGroupedHeads;
  plan.head_chunks = (group + plan.heads_per_cta - 1) / plan.heads_per_cta;
  const int64_t context = std::max<int64_t>(max_context, 1);
  const int64_t ctas =
      std::max<int64_t>(num_rows * g.num_kv_heads * plan.head_chunks, 1);
  const int64_t want =
      (4 * static_cast<int64_t>(std::max(num_sms, 1)) + ctas - 1) / ctas;
  const int64_t most = (context + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  const int64_t splits = std::clamp<int64_t>(want, 1, most);
  // Whole quanta; rounding a split down (never under kMinKeysPerSplit) keeps
  // at least the wanted number of CTAs.
  const int64_t per_split = (context + splits - 1) / splits;
  const int64_t quantum = kDecodeSplitQuantum;
  plan.keys_per_split = static_cast<int32_t>(
      splits == 1
          ? (context + quantum - 1) / quantum * quantum
          : std::max<int64_t>(kMinKeysPerSplit, per_split / quantum * quantum));
  plan.max_splits = static_cast<int32_t>((context + plan.keys_per_split - 1) /
                                         plan.keys_per_split);
  return plan;
}

size_t GroupedDecodeWorkspaceBytes(const AttentionGeometry& g,
                                   const DecodePlan& plan, int64_t num_rows) {
  if (!plan.supported || plan.max_splits <= 1) return 0;
  return static_cast<size_t>(num_rows) * g.num_heads * plan.max_splits *
         (g.head_dim + 2) * sizeof(float);
}

cudaError_t LaunchGroupedDecode(const AttentionGeometry& g,
                                const DecodePlan& plan, const float* q,
                                const void* k_cache, const void* v_cache,
                                const int32_t* block_tables,
                                const DecodeRow* rows, int64_t num_rows,
                                void* workspace, float* out,
                                cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!plan.supported) return cudaErrorInvalidValue;
  float* partials = static_cast<float*>(workspace);
  if (g.cache_type == DType::kF16) {
    LaunchForDim<__half>(g, plan, q, k_cache, v_cache, block_tables, rows,
                         num_rows, partials, out, stream);
  } else {
    LaunchForDim<__nv_bfloat16>(g, plan, q, k_cache, v_cache, block_tables,
                                rows, num_rows, partials, out, stream);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (plan.max_splits > 1) {
    return LaunchDecodeCombine(g, plan.keys_per_split, rows, num_rows,
                               plan.max_splits, partials, out, stream);
  }
  return cudaSuccess;
}

cudaError_t LaunchDecodeCombine(const AttentionGeometry& g,
                                int32_t keys_per_split, const DecodeRow* rows,
                                int64_t num_rows, int32_t max_splits,
                                const float* partials, float* out,
                                cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  // Threads: a multiple of 32 covering head_dim (up to 128, then strided).
  const int threads = std::min((g.head_dim + 31) / 32 * 32, 128);
  DecodeCombineKernel<<<dim3(static_cast<unsigned>(num_rows),
                             static_cast<unsigned>(g.num_heads)),
                        threads, 0, stream>>>(g, keys_per_split, rows,
                                              max_splits, partials, out);
  return cudaGetLastError();
}

int CurrentDeviceSmCount() {
  // Per device, fetched once: the plan (and so a CUDA graph's launch shape)
  // must not change between calls.
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    return 1;
  }
  if (cached[device] == 0) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
            cudaSuccess ||
        sms <= 0) {
      return 1;
    }
    cached[device] = sms;
  }
  return cached[device];
}

}  // namespace strata::cuda
