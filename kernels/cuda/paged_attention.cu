// Paged attention kernels: the KV write, the prefill kernel, and the
// per-head decode kernel for the geometries the grouped decode kernel
// (decode_attention.cu, which LaunchPagedAttentionDecode prefers) does not
// take: f32 caches, head dims other than 64/128/256, block sizes that are not
// powers of two. The per-head decode kernel streams keys with one warp per
// key (lane-strided head dims, a 5-step shuffle reduction per dot) and online
// softmax in registers; long contexts are split across CTAs. Each query head
// re-reads its kv head's keys (from L2 at best), which is why the grouped
// kernel exists. Prefill is compute-heavier: K/V tiles are staged once in
// shared memory (as f32) and reused by kPrefillTile query rows, on CUDA cores
// (no tensor-core MMA yet).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_attention_kernel.cuh"

namespace strata::cuda {
namespace {

template <typename T>
__global__ void WriteKvKernel(AttentionGeometry g, const float* __restrict__ k,
                              const float* __restrict__ v,
                              const int32_t* __restrict__ slots, int64_t total,
                              T* __restrict__ k_cache,
                              T* __restrict__ v_cache) {
  const int64_t kv_dim = static_cast<int64_t>(g.num_kv_heads) * g.head_dim;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       t < total; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t / kv_dim;
    const int64_t c = t % kv_dim;
    const int64_t head = c / g.head_dim, d = c % g.head_dim;
    const int64_t slot = slots[row];
    const int64_t block = slot / g.block_size, offset = slot % g.block_size;
    const int64_t dst =
        ((block * g.num_kv_heads + head) * g.block_size + offset) * g.head_dim +
        d;
    k_cache[dst] = FromFloat<T>(k[t]);
    v_cache[dst] = FromFloat<T>(v[t]);
  }
}

// grid (num_tiles, num_heads); kThreads threads; each warp owns
// kPrefillTile / kWarps query rows. Dynamic smem: K and V tiles
// [kKeyTile, head_dim] f32.
template <typename T>
__global__ void PrefillKernel(AttentionGeometry g, const float* __restrict__ q,
                              const T* __restrict__ k_cache,
                              const T* __restrict__ v_cache,
                              const int32_t* __restrict__ block_tables,
                              const PrefillTile* __restrict__ tiles,
                              float* __restrict__ out) {
  extern __shared__ float smem[];
  float* sk = smem;                          // [kKeyTile, head_dim]
  float* sv = smem + kKeyTile * g.head_dim;  // [kKeyTile, head_dim]
  constexpr int kRowsPerWarp = kPrefillTile / kWarps;
  const PrefillTile tile = tiles[blockIdx.x];
  const int head = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kv_head = head / (g.num_heads / g.num_kv_heads);
  const int32_t* table = block_tables + tile.table_offset;
  const int64_t q_width = static_cast<int64_t>(g.num_heads) * g.head_dim;

  float qr[kRowsPerWarp][kDimsPerLane], acc[kRowsPerWarp][kDimsPerLane];
  float m[kRowsPerWarp], l[kRowsPerWarp];
  int32_t pos[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int local = warp * kRowsPerWarp + i;
    pos[i] = local < tile.num_rows ? tile.first_position + local : -1;
    m[i] = -INFINITY;
    l[i] = 0.0f;
    const float* qh = q +
                      static_cast<int64_t>(tile.first_row + local) * q_width +
                      head * g.head_dim;
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) {
      const int d = lane + 32 * t;
      qr[i][t] = (pos[i] >= 0 && d < g.head_dim) ? qh[d] * g.scale : 0.0f;
      acc[i][t] = 0.0f;
    }
  }
  const int32_t last = tile.first_position + tile.num_rows - 1;
  for (int32_t k0 = 0; k0 <= last; k0 += kKeyTile) {
    const int32_t keys = min(kKeyTile, last + 1 - k0);
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < keys * g.head_dim; e += kThreads) {
      const int j = e / g.head_dim, d = e % g.head_dim;
      sk[e] = ToFloat(KeyRow(k_cache, table, k0 + j, kv_head, g)[d]);
      sv[e] = ToFloat(KeyRow(v_cache, table, k0 + j, kv_head, g)[d]);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (pos[i] < k0) continue;  // causal: this tile is all in the future
      const int32_t visible = min(keys, pos[i] - k0 + 1);
      for (int j = 0; j < visible; ++j) {
        float dot = 0.0f;
#pragma unroll
        for (int t = 0; t < kDimsPerLane; ++t) {
          const int d = lane + 32 * t;
          if (d < g.head_dim) dot += qr[i][t] * sk[j * g.head_dim + d];
        }
        const float s = WarpSum(dot);
        const float m_new = fmaxf(m[i], s);
        const float correction = expf(m[i] - m_new);
        const float p = expf(s - m_new);
        l[i] = l[i] * correction + p;
#pragma unroll
        for (int t = 0; t < kDimsPerLane; ++t) {
          const int d = lane + 32 * t;
          if (d < g.head_dim) {
            acc[i][t] = acc[i][t] * correction + p * sv[j * g.head_dim + d];
          }
        }
        m[i] = m_new;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (pos[i] < 0) continue;
    float* o = out +
               static_cast<int64_t>(tile.first_row + warp * kRowsPerWarp + i) *
                   q_width +
               head * g.head_dim;
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < g.head_dim) o[d] = acc[i][t] / l[i];
    }
  }
}

int32_t MaxSplits(int64_t max_context) {
  return static_cast<int32_t>((max_context + kSplitKeys - 1) / kSplitKeys);
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchWriteKv(const AttentionGeometry& g, const float* k,
                          const float* v, const int32_t* slots, int64_t n,
                          void* k_cache, void* v_cache, cudaStream_t stream) {
  const int64_t total = n * g.num_kv_heads * g.head_dim;
  if (total == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  int64_t blocks = (total + kBlock - 1) / kBlock;
  if (blocks > 524288) blocks = 524288;
  const unsigned grid = static_cast<unsigned>(blocks);
  switch (g.cache_type) {
    case DType::kF32:
      WriteKvKernel<<<grid, kBlock, 0, stream>>>(g, k, v, slots, total,
                                                 static_cast<float*>(k_cache),
                                                 static_cast<float*>(v_cache));
      break;
    case DType::kF16:
      WriteKvKernel<<<grid, kBlock, 0, stream>>>(g, k, v, slots, total,
                                                 static_cast<__half*>(k_cache),
                                                 static_cast<__half*>(v_cache));
      break;
    case DType::kBF16:
      WriteKvKernel<<<grid, kBlock, 0, stream>>>(
          g, k, v, slots, total, static_cast<__nv_bfloat16*>(k_cache),
          static_cast<__nv_bfloat16*>(v_cache));
      break;
  }
  return cudaGetLastError();
}

size_t DecodeWorkspaceBytes(const AttentionGeometry& g, int64_t num_rows,
                            int64_t max_context) {
  const int32_t splits = MaxSplits(max_context);
  const size_t per_head = splits <= 1
                              ? 0
                              : static_cast<size_t>(num_rows) * g.num_heads *
                                    splits * (g.head_dim + 2) * sizeof(float);
  const DecodePlan plan =
      PlanDecode(g, num_rows, max_context, CurrentDeviceSmCount());
  return std::max(per_head, GroupedDecodeWorkspaceBytes(g, plan, num_rows));
}

cudaError_t LaunchPagedAttentionDecode(
    const AttentionGeometry& g, const float* q, const void* k_cache,
    const void* v_cache, const int32_t* block_tables, const DecodeRow* rows,
    int64_t num_rows, int64_t max_context, void* workspace, float* out,
    cudaStream_t stream, DecodeKernelChoice choice) {
  if (num_rows == 0) return cudaSuccess;
  if (g.head_dim > kMaxHeadDim || g.head_dim <= 0) return cudaErrorInvalidValue;
  // STRATA_CUDA_DECODE_KERNEL=per_head turns the grouped kernel off for kAuto
  // (a diagnostic switch for a first GPU run: the kernel was written without
  // one). Read once.
  static const bool per_head_only = [] {
    const char* v = std::getenv("STRATA_CUDA_DECODE_KERNEL");
    return v != nullptr && std::string_view(v) == "per_head";
  }();
  if (choice == DecodeKernelChoice::kAuto && per_head_only) {
    choice = DecodeKernelChoice::kPerHead;
  }
  if (choice != DecodeKernelChoice::kPerHead) {
    const DecodePlan plan =
        PlanDecode(g, num_rows, max_context, CurrentDeviceSmCount());
    // 16-byte loads: q rows and cache views must start 16-byte aligned (they
    // do for the engine's tensors; a view at an odd offset takes the per-head
    // kernel rather than faulting).
    const bool aligned = ((reinterpret_cast<uintptr_t>(q) |
                           reinterpret_cast<uintptr_t>(k_cache) |
                           reinterpret_cast<uintptr_t>(v_cache)) &
                          15) == 0;
    if (plan.supported && aligned) {
      return LaunchGroupedDecode(g, plan, q, k_cache, v_cache, block_tables,
                                 rows, num_rows, workspace, out, stream);
    }
    if (choice == DecodeKernelChoice::kGrouped) return cudaErrorInvalidValue;
  }
  const int32_t splits = MaxSplits(max_context);
  const dim3 grid(static_cast<unsigned>(num_rows),
                  static_cast<unsigned>(g.num_heads),
                  static_cast<unsigned>(splits));
  float* partials = static_cast<float*>(workspace);
  switch (g.cache_type) {
    case DType::kF32:
      DecodeKernel<<<grid, kThreads, 0, stream>>>(
          g, q, static_cast<const float*>(k_cache),
          static_cast<const float*>(v_cache), block_tables, rows, partials,
          out);
      break;
    case DType::kF16:
      DecodeKernel<<<grid, kThreads, 0, stream>>>(
          g, q, static_cast<const __half*>(k_cache),
          static_cast<const __half*>(v_cache), block_tables, rows, partials,
          out);
      break;
    case DType::kBF16:
      DecodeKernel<<<grid, kThreads, 0, stream>>>(
          g, q, static_cast<const __nv_bfloat16*>(k_cache),
          static_cast<const __nv_bfloat16*>(v_cache), block_tables, rows,
          partials, out);
      break;
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (splits > 1) {
    return LaunchDecodeCombine(g, kSplitKeys, rows, num_rows, splits, partials,
                               out, stream);
  }
  return cudaSuccess;
}

cudaError_t LaunchPagedAttentionPrefill(
    const AttentionGeometry& g, const float* q, const void* k_cache,
    const void* v_cache, const int32_t* block_tables, const PrefillTile* tiles,
    int64_t num_tiles, float* out, cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  if (g.head_dim > kMaxHeadDim || g.head_dim <= 0) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(num_tiles),
                  static_cast<unsigned>(g.num_heads));
  const size_t smem = 2 * kKeyTile * g.head_dim * sizeof(float);  // <= 32 KiB
  switch (g.cache_type) {
    case DType::kF32:
      PrefillKernel<<<grid, kThreads, smem, stream>>>(
          g, q, static_cast<const float*>(k_cache),
          static_cast<const float*>(v_cache), block_tables, tiles, out);
      break;
    case DType::kF16:
      PrefillKernel<<<grid, kThreads, smem, stream>>>(
          g, q, static_cast<const __half*>(k_cache),
          static_cast<const __half*>(v_cache), block_tables, tiles, out);
      break;
    case DType::kBF16:
      PrefillKernel<<<grid, kThreads, smem, stream>>>(
          g, q, static_cast<const __nv_bfloat16*>(k_cache),
          static_cast<const __nv_bfloat16*>(v_cache), block_tables, tiles, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace strata::cuda
