// The grouped decode attention kernels (see decode_attention.cu for the
// design and the napkin bound): device code only, included by
// decode_attention.cu and, compiled for the host under the SIMT emulator, by
// tests/cuda/emulated_kernels_test.cc, which runs them without a GPU. The
// unnamed namespace is deliberate: each includer gets its own copy, so the
// emulated host functions never collide with the library's kernel stubs.
#ifndef STRATA_KERNELS_CUDA_DECODE_ATTENTION_KERNEL_CUH_
#define STRATA_KERNELS_CUDA_DECODE_ATTENTION_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/paged_attention.h"

namespace strata::cuda {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
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

// grid (num_rows, num_kv_heads * head_chunks, max_splits); kDecodeThreads
// threads. D: head_dim; G: query heads per CTA (the group, rounded up to 1, 4
// or 8).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads)
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
  constexpr int kGroups = kGroupsPerWarp * kDecodeWarps;
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
  for (int idx = threadIdx.x; idx < heads_here * D; idx += kDecodeThreads) {
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

// log2 of a power-of-two block size (the kernel's block_shift).
inline int32_t BlockShift(int32_t block_size) {
  int32_t s = 0;
  while ((1 << s) < block_size) ++s;
  return s;
}

// Calls f(std::integral_constant<int, G>) for a plan's heads_per_cta (1, 4
// or 8): the GroupedDecodeKernel instance to launch.
template <typename F>
void DispatchGroup(int32_t heads_per_cta, F&& f) {
  if (heads_per_cta == 1) {
    f(std::integral_constant<int, 1>());
  } else if (heads_per_cta == 4) {
    f(std::integral_constant<int, 4>());
  } else {
    f(std::integral_constant<int, 8>());
  }
}

}  // namespace
}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_DECODE_ATTENTION_KERNEL_CUH_
