// The per-head decode attention kernel and the helpers the paged attention
// kernels share (see paged_attention.cu): device code only, included by
// paged_attention.cu and, compiled for the host under the SIMT emulator, by
// tests/cuda/emulated_kernels_test.cc. The unnamed namespace is deliberate
// (see decode_attention_kernel.cuh).
#ifndef STRATA_KERNELS_CUDA_PAGED_ATTENTION_KERNEL_CUH_
#define STRATA_KERNELS_CUDA_PAGED_ATTENTION_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/paged_attention.h"

namespace strata::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kDimsPerLane = kMaxHeadDim / 32;  // 8
constexpr int kKeyTile = 16;                    // prefill keys per smem tile

template <typename T>
__device__ __forceinline__ const T* KeyRow(const T* cache, const int32_t* table,
                                           int32_t position, int32_t kv_head,
                                           const AttentionGeometry& g) {
  const int32_t block = table[position / g.block_size];
  const int32_t offset = position % g.block_size;
  return cache + ((static_cast<int64_t>(block) * g.num_kv_heads + kv_head) *
                      g.block_size +
                  offset) *
                     g.head_dim;
}

// ---- kernels ----

// grid (num_rows, num_heads, max_splits); kThreads threads.
// Partials: [num_rows, num_heads, max_splits, head_dim + 2] f32 (acc, m, l).
template <typename T>
__global__ void DecodeKernel(AttentionGeometry g, const float* __restrict__ q,
                             const T* __restrict__ k_cache,
                             const T* __restrict__ v_cache,
                             const int32_t* __restrict__ block_tables,
                             const DecodeRow* __restrict__ rows,
                             float* __restrict__ partials,
                             float* __restrict__ out) {
  __shared__ float s_m[kWarps], s_l[kWarps];
  __shared__ float s_acc[kWarps][kMaxHeadDim];
  const DecodeRow r = rows[blockIdx.x];
  const int head = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t context = r.position + 1;
  const int32_t row_splits = (context + kSplitKeys - 1) / kSplitKeys;
  if (split >= row_splits) return;  // uniform for the CTA
  const int kv_head = head / (g.num_heads / g.num_kv_heads);
  const int32_t* table = block_tables + r.table_offset;
  const int64_t q_width = static_cast<int64_t>(g.num_heads) * g.head_dim;
  const float* qh = q + r.row * q_width + head * g.head_dim;

  float qr[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int t = 0; t < kDimsPerLane; ++t) {
    const int d = lane + 32 * t;
    qr[t] = d < g.head_dim ? qh[d] * g.scale : 0.0f;
    acc[t] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int32_t begin = split * kSplitKeys;
  const int32_t end = min(context, begin + kSplitKeys);
  for (int32_t j = begin + warp; j < end; j += kWarps) {
    const T* kr = KeyRow(k_cache, table, j, kv_head, g);
    float dot = 0.0f;
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < g.head_dim) dot += qr[t] * ToFloat(kr[d]);
    }
    const float s = WarpSum(dot);
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 when m was -inf
    const float p = expf(s - m_new);
    l = l * correction + p;
    const T* vr = KeyRow(v_cache, table, j, kv_head, g);
#pragma unroll
    for (int t = 0; t < kDimsPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < g.head_dim) acc[t] = acc[t] * correction + p * ToFloat(vr[d]);
    }
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int t = 0; t < kDimsPerLane; ++t) {
    const int d = lane + 32 * t;
    if (d < g.head_dim) s_acc[warp][d] = acc[t];
  }
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w]);
  float l_all = 0.0f;
  float factor[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    factor[w] = s_l[w] > 0.0f ? expf(s_m[w] - m_all) : 0.0f;
    l_all += s_l[w] * factor[w];
  }
  for (int d = threadIdx.x; d < g.head_dim; d += kThreads) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w) a += s_acc[w][d] * factor[w];
    if (row_splits == 1) {
      out[r.row * q_width + head * g.head_dim + d] = a / l_all;
    } else {
      float* p =
          partials +
          ((static_cast<int64_t>(blockIdx.x) * gridDim.y + head) * gridDim.z +
           split) *
              (g.head_dim + 2);
      p[d] = a;
      if (d == 0) {
        // The shared combine kernel (decode_attention.h) works in exp2.
        p[g.head_dim] = m_all * 1.4426950408889634f;
        p[g.head_dim + 1] = l_all;
      }
    }
  }
}

}  // namespace
}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_PAGED_ATTENTION_KERNEL_CUH_
