// The int8 GEMV kernels (see int8_gemv.cu for the design and the napkin
// bound): device code only, included by int8_gemv.cu and, compiled for the
// host under the SIMT emulator, by tests/cuda/emulated_kernels_test.cc. The
// unnamed namespace is deliberate (see decode_attention_kernel.cuh).
#ifndef STRATA_KERNELS_CUDA_INT8_GEMV_KERNEL_CUH_
#define STRATA_KERNELS_CUDA_INT8_GEMV_KERNEL_CUH_

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/int8_gemv.h"

namespace strata::cuda {
namespace {

constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kChunk = 16;  // int8 weights per 16-byte load

__device__ __forceinline__ uint32_t Word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Transposing butterfly over a warp, step S (xor offset 16 >> S): while a
// lane holds two or more values, it sends the half its partner keeps and adds
// the half it receives; after that, plain xor sums. A lane ends with
// max(V / 32, 1) full warp sums, indices offset + i. Templated so every
// register index is a constant (no local-memory array).
template <typename T, int V, int S>
struct Butterfly {
  static __device__ __forceinline__ void Run(T (&vals)[V], int lane,
                                             int& offset) {
    constexpr int kOffset = 16 >> S;
    constexpr int kCount = V >> S;
    if constexpr (kCount >= 2) {
      constexpr int kHalf = kCount / 2;
      const bool upper = (lane & kOffset) != 0;
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const T send = upper ? vals[i] : vals[i + kHalf];
        const T keep = upper ? vals[i + kHalf] : vals[i];
        vals[i] = keep + __shfl_xor_sync(0xffffffffu, send, kOffset);
      }
      if (upper) offset += kHalf;
    } else {
      vals[0] += __shfl_xor_sync(0xffffffffu, vals[0], kOffset);
    }
    if constexpr (S < 4) Butterfly<T, V, S + 1>::Run(vals, lane, offset);
  }
};

// Each warp's V partial sums (per thread) to red[warp][0..V), then a barrier;
// the caller sums red[0..kGemvWarps)[t] in that fixed order.
template <typename T, int V>
__device__ __forceinline__ void ReduceToShared(T (&vals)[V],
                                               T (&red)[kGemvWarps][V]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int offset = 0;
  Butterfly<T, V, 0>::Run(vals, lane, offset);
  constexpr int kHeld = V >= 32 ? V / 32 : 1;
  constexpr int kDuplicateMask = V >= 32 ? 0 : 32 / V - 1;  // plain-step lanes
  if ((lane & kDuplicateMask) == 0) {
#pragma unroll
    for (int i = 0; i < kHeld; ++i) red[warp][offset + i] = vals[i];
  }
  __syncthreads();
}

// After ReduceToShared: f(row, channel, sum over the warps in a fixed order)
// for each of the CTA's N x C sums that is inside [0, n) x [j0, m).
template <int N, int C, typename T, typename F>
__device__ __forceinline__ void ForEachSum(const T (&red)[kGemvWarps][N * C],
                                           int64_t j0, int64_t m, int n,
                                           F&& f) {
  for (int t = threadIdx.x; t < N * C; t += kGemvThreads) {
    const int c = t / N, r = t % N;
    const int64_t j = j0 + c;
    if (j < m && r < n) {
      T sum = 0;
#pragma unroll
      for (int wi = 0; wi < kGemvWarps; ++wi) sum += red[wi][t];
      f(static_cast<int64_t>(r), j, sum);
    }
  }
}

// grid ceil(m / C); kGemvThreads threads. N: rows the kernel is built for (rows
// past n read row n - 1 and are not written).
template <int N, int C>
__global__ void __launch_bounds__(kGemvThreads)
    Int8GemvTiledKernel(const float* __restrict__ x,
                        const int8_t* __restrict__ w,
                        const float* __restrict__ scales, int n, int64_t m,
                        int64_t k, float* __restrict__ out) {
  constexpr int V = C * N;  // partial sums per thread, index c * N + r
  __shared__ float red[kGemvWarps][V];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * C;

  const int8_t* wrow[C];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    wrow[c] = w + min(j0 + c, m - 1) * k;
  }

  float vals[V];
#pragma unroll
  for (int i = 0; i < V; ++i) vals[i] = 0.0f;

  const int64_t chunks = k / kChunk;
  for (int64_t q = threadIdx.x; q < chunks; q += kGemvThreads) {
    uint4 wraw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      wraw[c] = __ldcs(reinterpret_cast<const uint4*>(wrow[c] + q * kChunk));
    }
    // Not unrolled: unrolled, the compiler hoists all 4 * N x loads and runs
    // out of registers at 16 rows (Word selects with a runtime g).
#pragma unroll 1
    for (int g = 0; g < 4; ++g) {
      // Four weights of every channel, then each row's four x values once.
      float wf[C][4];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const uint32_t word = Word(wraw[c], g);
#pragma unroll
        for (int e = 0; e < 4; ++e) wf[c][e] = Int8LaneToFloat(word, e);
      }
#pragma unroll
      for (int r = 0; r < N; ++r) {
        // Rows past n re-read row n - 1 (not written); the address is
        // recomputed here rather than held, to save N pointer registers.
        const float4 xv = __ldg(reinterpret_cast<const float4*>(
            x + static_cast<int64_t>(min(r, n - 1)) * k + q * kChunk + g * 4));
#pragma unroll
        for (int c = 0; c < C; ++c) {
          float a = vals[c * N + r];
          a = fmaf(wf[c][0], xv.x, a);
          a = fmaf(wf[c][1], xv.y, a);
          a = fmaf(wf[c][2], xv.z, a);
          a = fmaf(wf[c][3], xv.w, a);
          vals[c * N + r] = a;
        }
      }
    }
  }

  ReduceToShared(vals, red);
  ForEachSum<N, C>(red, j0, m, n, [&](int64_t r, int64_t j, float sum) {
    out[r * m + j] = sum * scales[j];
  });
}

// The LLM.int8() inlier product at decode batch sizes: int8 activations
// (row-quantized, outlier columns zeroed) times int8 weights into int32,
// exact (so any summation order gives the same bits), 4 __dp4a per 16-byte
// chunk of a channel and row. Same tiling as Int8GemvTiledKernel; x rows are
// 16 int8 per load, reused by the CTA's C channels.
template <int N, int C>
__global__ void __launch_bounds__(kGemvThreads)
    Int8DotGemvKernel(const int8_t* __restrict__ xq,
                      const int8_t* __restrict__ w, int n, int64_t m, int64_t k,
                      int32_t* __restrict__ acc) {
  constexpr int V = C * N;
  __shared__ int32_t red[kGemvWarps][V];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * C;
  int32_t vals[V];
#pragma unroll
  for (int i = 0; i < V; ++i) vals[i] = 0;
  const int64_t chunks = k / kChunk;
  for (int64_t q = threadIdx.x; q < chunks; q += kGemvThreads) {
    uint4 wraw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      wraw[c] = __ldcs(reinterpret_cast<const uint4*>(
          w + min(j0 + c, m - 1) * k + q * kChunk));
    }
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(
          xq + static_cast<int64_t>(min(r, n - 1)) * k + q * kChunk));
#pragma unroll
      for (int c = 0; c < C; ++c) {
        int32_t a = vals[c * N + r];
        a = __dp4a(static_cast<int>(wraw[c].x), static_cast<int>(xv.x), a);
        a = __dp4a(static_cast<int>(wraw[c].y), static_cast<int>(xv.y), a);
        a = __dp4a(static_cast<int>(wraw[c].z), static_cast<int>(xv.z), a);
        a = __dp4a(static_cast<int>(wraw[c].w), static_cast<int>(xv.w), a);
        vals[c * N + r] = a;
      }
    }
  }
  ReduceToShared(vals, red);
  ForEachSum<N, C>(red, j0, m, n, [&](int64_t r, int64_t j, int32_t sum) {
    acc[r * m + j] = sum;
  });
}

// Calls f(std::integral_constant<int, N>, std::integral_constant<int, C>)
// with the kernel shape for n rows (1 <= n <= 16): N rows (n rounded up),
// C channels per CTA (8, or 4 from 8 rows, where N * C partial sums per
// thread would cost too many registers).
template <typename F>
void DispatchGemvRows(int64_t n, F&& f) {
  using std::integral_constant;
  if (n == 1) {
    f(integral_constant<int, 1>(), integral_constant<int, 8>());
  } else if (n == 2) {
    f(integral_constant<int, 2>(), integral_constant<int, 8>());
  } else if (n <= 4) {
    f(integral_constant<int, 4>(), integral_constant<int, 8>());
  } else if (n <= 8) {
    f(integral_constant<int, 8>(), integral_constant<int, 4>());
  } else {
    f(integral_constant<int, 16>(), integral_constant<int, 4>());
  }
}

}  // namespace
}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_INT8_GEMV_KERNEL_CUH_
