// Weight-only int8 GEMV, batch 1..16.
//
// Napkin bound. Decode with int8 weights reads each weight byte once per
// step: the 1.1B benchmark model's 16 layers hold 0.87 G int8 weights plus a
// bf16 LM head, so a batch-1 step is bound at ~0.3 ms on the H200's 4.8 TB/s
// against ~0.5 ms for bf16; the issue's target is 1.6x the bf16 tok/s. Each
// weight byte then feeds n FMAs (one per batch row); at 4.8 TB/s / 132 SMs ~
// 18 B/cycle per SM and 128 FMA/cycle per SM, f32 FMAs keep up to n ~ 7 and
// cap n = 16 at about half of bandwidth; x (f32) is read from L1 once per
// 16-byte weight chunk per row and reused by C channels, so L1 traffic is
// n / C bytes per weight byte.
//
// The first version (warp per channel, kept as the fallback) lost at every
// batch: int-to-float conversions (quarter rate), x re-read per channel, and
// a 5-step shuffle reduction per (channel, row). Here:
//  * a CTA of 4 warps owns C output channels (8, or 4 from 8 rows) and walks
//    k in 16-byte chunks, 128 threads side by side (each lane one chunk of
//    every channel: C evict-first 16-byte loads in flight per lane);
//  * int8 -> f32 by placing the byte in a float mantissa (Int8LaneToFloat);
//  * the C x N partial sums leave a warp by a transposing butterfly (each
//    xor step halves the values a lane holds: ~C*N shuffles instead of
//    5*C*N), then the 4 warps are summed through shared memory in a fixed
//    order (deterministic), and the channel scale is applied once.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/int8_gemv.h"

namespace strata::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
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
// the caller sums red[0..kWarps)[t] in that fixed order.
template <typename T, int V>
__device__ __forceinline__ void ReduceToShared(T (&vals)[V],
                                               T (&red)[kWarps][V]) {
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

// grid ceil(m / C); kThreads threads. N: rows the kernel is built for (rows
// past n read row n - 1 and are not written).
template <int N, int C>
__global__ void __launch_bounds__(kThreads)
    Int8GemvTiledKernel(const float* __restrict__ x,
                        const int8_t* __restrict__ w,
                        const float* __restrict__ scales, int n, int64_t m,
                        int64_t k, float* __restrict__ out) {
  constexpr int V = C * N;  // partial sums per thread, index c * N + r
  __shared__ float red[kWarps][V];
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
  for (int64_t q = threadIdx.x; q < chunks; q += kThreads) {
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
  for (int t = threadIdx.x; t < V; t += kThreads) {
    const int c = t / N, r = t % N;
    const int64_t j = j0 + c;
    if (j < m && r < n) {
      float sum = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) sum += red[wi][t];
      out[static_cast<int64_t>(r) * m + j] = sum * scales[j];
    }
  }
}

// The LLM.int8() inlier product at decode batch sizes: int8 activations
// (row-quantized, outlier columns zeroed) times int8 weights into int32,
// exact (so any summation order gives the same bits), 4 __dp4a per 16-byte
// chunk of a channel and row. Same tiling as Int8GemvTiledKernel; x rows are
// 16 int8 per load, reused by the CTA's C channels.
template <int N, int C>
__global__ void __launch_bounds__(kThreads)
    Int8DotGemvKernel(const int8_t* __restrict__ xq,
                      const int8_t* __restrict__ w, int n, int64_t m, int64_t k,
                      int32_t* __restrict__ acc) {
  constexpr int V = C * N;
  __shared__ int32_t red[kWarps][V];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * C;
  int32_t vals[V];
#pragma unroll
  for (int i = 0; i < V; ++i) vals[i] = 0;
  const int64_t chunks = k / kChunk;
  for (int64_t q = threadIdx.x; q < chunks; q += kThreads) {
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
  for (int t = threadIdx.x; t < V; t += kThreads) {
    const int c = t / N, r = t % N;
    const int64_t j = j0 + c;
    if (j < m && r < n) {
      int32_t sum = 0;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) sum += red[wi][t];
      acc[static_cast<int64_t>(r) * m + j] = sum;
    }
  }
}

template <int N, int C>
cudaError_t LaunchDot(const int8_t* xq, const int8_t* w, int64_t n, int64_t m,
                      int64_t k, int32_t* acc, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((m + C - 1) / C);
  Int8DotGemvKernel<N, C>
      <<<grid, kThreads, 0, stream>>>(xq, w, static_cast<int>(n), m, k, acc);
  return cudaGetLastError();
}

template <int N, int C>
cudaError_t Launch(const float* x, const int8_t* w, const float* scales,
                   int64_t n, int64_t m, int64_t k, float* out,
                   cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((m + C - 1) / C);
  Int8GemvTiledKernel<N, C><<<grid, kThreads, 0, stream>>>(
      x, w, scales, static_cast<int>(n), m, k, out);
  return cudaGetLastError();
}

}  // namespace

bool Int8GemvTiledSupports(const float* x, const int8_t* w, int64_t n,
                           int64_t k) {
  return n >= 1 && n <= 16 && k > 0 && k % kChunk == 0 &&
         ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) &
          15) == 0;
}

cudaError_t LaunchInt8GemvTiled(const float* x, const int8_t* w,
                                const float* scales, int64_t n, int64_t m,
                                int64_t k, float* out, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (!Int8GemvTiledSupports(x, w, n, k)) return cudaErrorInvalidValue;
  if (n == 1) return Launch<1, 8>(x, w, scales, n, m, k, out, stream);
  if (n == 2) return Launch<2, 8>(x, w, scales, n, m, k, out, stream);
  if (n <= 4) return Launch<4, 8>(x, w, scales, n, m, k, out, stream);
  if (n <= 8) return Launch<8, 4>(x, w, scales, n, m, k, out, stream);
  return Launch<16, 4>(x, w, scales, n, m, k, out, stream);
}

bool Int8DotGemvSupports(const int8_t* xq, const int8_t* w, int64_t n,
                         int64_t k) {
  return n >= 1 && n <= 16 && k > 0 && k % kChunk == 0 &&
         ((reinterpret_cast<uintptr_t>(xq) | reinterpret_cast<uintptr_t>(w)) &
          15) == 0;
}

cudaError_t LaunchInt8DotGemv(const int8_t* xq, const int8_t* w, int64_t n,
                              int64_t m, int64_t k, int32_t* acc,
                              cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (!Int8DotGemvSupports(xq, w, n, k)) return cudaErrorInvalidValue;
  if (n == 1) return LaunchDot<1, 8>(xq, w, n, m, k, acc, stream);
  if (n == 2) return LaunchDot<2, 8>(xq, w, n, m, k, acc, stream);
  if (n <= 4) return LaunchDot<4, 8>(xq, w, n, m, k, acc, stream);
  if (n <= 8) return LaunchDot<8, 8>(xq, w, n, m, k, acc, stream);
  return LaunchDot<16, 4>(xq, w, n, m, k, acc, stream);
}

}  // namespace strata::cuda
