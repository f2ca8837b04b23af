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
#include "kernels/cuda/int8_gemv_kernel.cuh"

namespace strata::cuda {
namespace {

// Both GEMVs: 1..16 rows, whole 16-byte chunks, 16-byte aligned operands.
bool GemvShapeSupported(const void* x, const void* w, int64_t n, int64_t k) {
  return n >= 1 && n <= 16 && k > 0 && k % kChunk == 0 &&
         ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) &
          15) == 0;
}

}  // namespace

bool Int8GemvTiledSupports(const float* x, const int8_t* w, int64_t n,
                           int64_t k) {
  return GemvShapeSupported(x, w, n, k);
}

cudaError_t LaunchInt8GemvTiled(const float* x, const int8_t* w,
                                const float* scales, int64_t n, int64_t m,
                                int64_t k, float* out, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (!Int8GemvTiledSupports(x, w, n, k)) return cudaErrorInvalidValue;
  DispatchGemvRows(n, [&](auto rows, auto channels) {
    constexpr int N = decltype(rows)::value, C = decltype(channels)::value;
    Int8GemvTiledKernel<N, C>
        <<<static_cast<unsigned>((m + C - 1) / C), kGemvThreads, 0, stream>>>(
            x, w, scales, static_cast<int>(n), m, k, out);
  });
  return cudaGetLastError();
}

bool Int8DotGemvSupports(const int8_t* xq, const int8_t* w, int64_t n,
                         int64_t k) {
  return GemvShapeSupported(xq, w, n, k);
}

cudaError_t LaunchInt8DotGemv(const int8_t* xq, const int8_t* w, int64_t n,
                              int64_t m, int64_t k, int32_t* acc,
                              cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (!Int8DotGemvSupports(xq, w, n, k)) return cudaErrorInvalidValue;
  DispatchGemvRows(n, [&](auto rows, auto channels) {
    constexpr int N = decltype(rows)::value, C = decltype(channels)::value;
    Int8DotGemvKernel<N, C>
        <<<static_cast<unsigned>((m + C - 1) / C), kGemvThreads, 0, stream>>>(
            xq, w, static_cast<int>(n), m, k, acc);
  });
  return cudaGetLastError();
}

}  // namespace strata::cuda
