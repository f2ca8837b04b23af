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
#include "kernels/cuda/device_utils.cuh"

namespace strata::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;  // 16-bit elements per 16-byte load
constexpr float kLog2e = 1.4426950408889634f;

// 8 packed 16-bit values -> f32.
__device__ __forceinline__ void Unpack(const uint4& raw, __half, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}
__device__ __forceinline__ void Unpack(const uint4& raw, __nv_bfloat16,
                                       float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// grid (num_rows, num_kv_heads * head_chunks, max_splits); kThreads threads.
// D: head_dim; G: query heads per CTA (the group, rounded up to 1, 4 or 8).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads)
    GroupedDecodeKernel(AttentionGeometry g, int32_t keys_per_split,
                        int32_t head_chunks, int32_t block_shift,
                        const float* __restrict__ q,
                        const T* __restrict__ k_cache,
                        const T* __restrict__ v_cache,
                        const int32_t* __restrict__ block_tables,
                        const DecodeRow* __restrict__ rows,
                        float* __restrict__ partials, float* __restrict__ out) {
  constexpr int kLanes = D / kVec;  // lanes per key row: 8, 16 or 32
  constexpr int kGroupsPerWarp = 32 / kLanes;
  constexpr int kGroups = kGroupsPerWarp * kWarps;
  constexpr int kChunk = G >= 8 ? 2 : 4;  // keys per group per step
  __shared__ float s_ml[kGroups][G][2];
  __shared__ __align__(16) float s_acc[kGroups][G][D];

  const DecodeRow r = rows[blockIdx.x];
  const int32_t context = r.position + 1;
  const int split = blockIdx.z;
  const int32_t row_splits = (context + keys_per_split - 1) / keys_per_split;
  if (split >= row_splits) return;  // uniform for the CTA
  const int group_size = g.num_heads / g.num_kv_heads;
  const int kv_head = blockIdx.y / head_chunks;
  const int chunk = blockIdx.y % head_chunks;
  const int first_head = kv_head * group_size + chunk * G;
  const int heads_here = min(G, group_size - chunk * G);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp * kGroupsPerWarp + lane / kLanes;
  const int sub = lane % kLanes;  // this lane's 8 dims: [sub*8, sub*8 + 8)
  const int64_t q_width = static_cast<int64_t>(g.num_heads) * D;
  const int32_t* table = block_tables + r.table_offset;
  const int32_t block_mask = (1 << block_shift) - 1;
  // Element offset of (block 0, kv_head, offset 0, dim sub*8); a key adds
  // block * block_stride + offset * D.
  const int64_t block_stride = static_cast<int64_t>(g.num_kv_heads) * D
                               << block_shift;
  const int64_t head_offset =
      (static_cast<int64_t>(kv_head) * D << block_shift) + sub * kVec;

  float qr[G][kVec], acc[G][kVec], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const float scale = h < heads_here ? g.scale * kLog2e : 0.0f;
    const float* qh =
        q + r.row * q_width +
        static_cast<int64_t>(first_head + min(h, heads_here - 1)) * D +
        sub * kVec;
    const float4 a = *reinterpret_cast<const float4*>(qh);
    const float4 b = *reinterpret_cast<const float4*>(qh + 4);
    qr[h][0] = a.x * scale;
    qr[h][1] = a.y * scale;
    qr[h][2] = a.z * scale;
    qr[h][3] = a.w * scale;
    qr[h][4] = b.x * scale;
    qr[h][5] = b.y * scale;
    qr[h][6] = b.z * scale;
    qr[h][7] = b.w * scale;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[h][e] = 0.0f;
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }

  const int32_t begin = split * keys_per_split;
  const int32_t end = min(context, begin + keys_per_split);
  for (int32_t base = begin; base < end; base += kGroups * kChunk) {
    uint4 kraw[kChunk], vraw[kChunk];
    bool valid[kChunk];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      const int32_t j = base + c * kGroups + group;
      valid[c] = j < end;
      if (valid[c]) {
        const int64_t at = table[j >> block_shift] * block_stride +
                           head_offset +
                           static_cast<int64_t>(j & block_mask) * D;
        // Streamed once: evict-first loads keep L2 for the weights.
        kraw[c] = __ldcs(reinterpret_cast<const uint4*>(k_cache + at));
        vraw[c] = __ldcs(reinterpret_cast<const uint4*>(v_cache + at));
      } else {
        kraw[c] = make_uint4(0, 0, 0, 0);
        vraw[c] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[kChunk][G];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      float kf[kVec];
      Unpack(kraw[c], T(), kf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(qr[h][e], kf[e], dot);
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) {
          dot += __shfl_xor_sync(0xffffffffu, dot, o);
        }
        s[c][h] = valid[c] ? dot : -INFINITY;
      }
    }
    float vf[kChunk][kVec];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) Unpack(vraw[c], T(), vf[c]);
#pragma unroll
    for (int h = 0; h < G; ++h) {
      float chunk_max = s[0][h];
#pragma unroll
      for (int c = 1; c < kChunk; ++c) chunk_max = fmaxf(chunk_max, s[c][h]);
      const float m_new = fmaxf(m[h], chunk_max);
      if (m_new == -INFINITY) continue;  // no valid key yet (group tail)
      const float correction = exp2f(m[h] - m_new);  // 0 when m was -inf
      l[h] *= correction;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[h][e] *= correction;
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        const float p = exp2f(s[c][h] - m_new);  // 0 for invalid keys
        l[h] += p;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[h][e] = fmaf(p, vf[c][e], acc[h][e]);
      }
      m[h] = m_new;
    }
  }

  // Merge the lane groups.
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (sub == 0) {
      s_ml[group][h][0] = m[h];
      s_ml[group][h][1] = l[h];
    }
    float4* dst = reinterpret_cast<float4*>(&s_acc[group][h][sub * kVec]);
    dst[0] = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
    dst[1] = make_float4(acc[h][4], acc[h][5], acc[h][6], acc[h][7]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < heads_here * D; idx += kThreads) {
    const int h = idx / D, d = idx % D;
    float m_all = -INFINITY;
    for (int w = 0; w < kGroups; ++w) m_all = fmaxf(m_all, s_ml[w][h][0]);
    float l_all = 0.0f, a = 0.0f;
    for (int w = 0; w < kGroups; ++w) {
      if (s_ml[w][h][1] > 0.0f) {
        const float f = exp2f(s_ml[w][h][0] - m_all);
        l_all += s_ml[w][h][1] * f;
        a += s_acc[w][h][d] * f;
      }
    }
    const int head = first_head + h;
    if (row_splits == 1) {
      out[r.row * q_width + static_cast<int64_t>(head) * D + d] = a / l_all;
    } else {
      float* p =
          partials +
          ((static_cast<int64_t>(blockIdx.x) * g.num_heads + head) * gridDim.z +
           split) *
              (D + 2);
      p[d] = a;
      if (d == 0) {
        p[D] = m_all;
        p[D + 1] = l_all;
      }
    }
  }
}

// grid (num_rows, num_heads); merges the splits of rows that have several
// (partials in the exp2 domain), for both decode kernels.
__global__ void DecodeCombineKernel(AttentionGeometry g, int32_t keys_per_split,
                                    const DecodeRow* __restrict__ rows,
                                    int max_splits,
                                    const float* __restrict__ partials,
                                    float* __restrict__ out) {
  const DecodeRow r = rows[blockIdx.x];
  const int head = blockIdx.y;
  const int32_t row_splits =
      (r.position + keys_per_split) / keys_per_split;  // ceil(context / kps)
  if (row_splits == 1) return;
  const int d_width = g.head_dim + 2;
  const float* base =
      partials + (static_cast<int64_t>(blockIdx.x) * g.num_heads + head) *
                     max_splits * d_width;
  float m_all = -INFINITY;
  for (int s = 0; s < row_splits; ++s) {
    m_all = fmaxf(m_all, base[s * d_width + g.head_dim]);
  }
  float l_all = 0.0f;
  for (int s = 0; s < row_splits; ++s) {
    const float* p = base + s * d_width;
    if (p[g.head_dim + 1] > 0.0f) {
      l_all += p[g.head_dim + 1] * exp2f(p[g.head_dim] - m_all);
    }
  }
  const int64_t q_width = static_cast<int64_t>(g.num_heads) * g.head_dim;
  for (int d = threadIdx.x; d < g.head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < row_splits; ++s) {
      const float* p = base + s * d_width;
      if (p[g.head_dim + 1] > 0.0f) a += p[d] * exp2f(p[g.head_dim] - m_all);
    }
    out[r.row * q_width + static_cast<int64_t>(head) * g.head_dim + d] =
        a / l_all;
  }
}

int32_t Log2(int32_t x) {
  int32_t s = 0;
  while ((1 << s) < x) ++s;
  return s;
}

template <typename T, int D, int G>
void LaunchTyped(const AttentionGeometry& g, const DecodePlan& plan,
                 const float* q, const void* k_cache, const void* v_cache,
                 const int32_t* block_tables, const DecodeRow* rows,
                 int64_t num_rows, float* partials, float* out,
                 cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(num_rows),
                  static_cast<unsigned>(g.num_kv_heads * plan.head_chunks),
                  static_cast<unsigned>(plan.max_splits));
  GroupedDecodeKernel<T, D, G><<<grid, kThreads, 0, stream>>>(
      g, plan.keys_per_split, plan.head_chunks, Log2(g.block_size), q,
      static_cast<const T*>(k_cache), static_cast<const T*>(v_cache),
      block_tables, rows, partials, out);
}

template <typename T, int D>
void LaunchForGroup(const AttentionGeometry& g, const DecodePlan& plan,
                    const float* q, const void* k, const void* v,
                    const int32_t* tables, const DecodeRow* rows, int64_t n,
                    float* partials, float* out, cudaStream_t stream) {
  switch (plan.heads_per_cta) {
    case 1:
      LaunchTyped<T, D, 1>(g, plan, q, k, v, tables, rows, n, partials, out,
                           stream);
      break;
    case 4:
      LaunchTyped<T, D, 4>(g, plan, q, k, v, tables, rows, n, partials, out,
                           stream);
      break;
    default:
      LaunchTyped<T, D, 8>(g, plan, q, k, v, tables, rows, n, partials, out,
                           stream);
      break;
  }
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
