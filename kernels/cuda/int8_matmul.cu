// int8 kernels. Why written this way: decode with int8 weights is bound by
// reading the weights (~1 byte per weight, half of bf16's traffic). The GEMV
// is int8_gemv.cu's tiled kernel; the one here (a warp per output channel,
// 16-byte loads when k % 16 == 0, up to kMaxGemvRows partial sums in
// registers) is the fallback for other shapes. The LLM.int8() pieces around the
// cuBLASLt int8 GEMM are memory passes over the activations; outlier detection
// is a grid-wide flag pass plus a single-CTA ordered compaction so the chosen
// columns (and so the rounding) are deterministic. Those passes and the
// weights' quantization live in int8_matmul_kernel.cuh, where the SIMT
// emulator runs them too.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/int8_gemv.h"
#include "kernels/cuda/int8_matmul.h"
#include "kernels/cuda/int8_matmul_kernel.cuh"

namespace strata::cuda {
namespace {

// ---- kernels ----

template <typename T>
__global__ void DequantizeRowsKernel(const int8_t* __restrict__ q,
                                     const float* __restrict__ scales,
                                     int64_t total, int64_t k,
                                     T* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<T>(static_cast<float>(q[i]) * scales[i / k]);
  }
}

// One warp per output channel j; kInt8Threads / 32 channels per block.
__global__ void Int8GemvKernel(const float* __restrict__ x,
                               const int8_t* __restrict__ w,
                               const float* __restrict__ scales, int n,
                               int64_t m, int64_t k, float* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (kInt8Threads / 32) +
                    (threadIdx.x >> 5);
  if (j >= m) return;
  const int8_t* wr = w + j * k;
  float acc[kMaxGemvRows];
#pragma unroll
  for (int r = 0; r < kMaxGemvRows; ++r) acc[r] = 0.0f;
  const bool vectorised =
      (k % 16 == 0) && (reinterpret_cast<uintptr_t>(w) % 16 == 0);
  if (vectorised) {
    for (int64_t c = static_cast<int64_t>(lane) * 16; c < k; c += 32 * 16) {
      const int4 packed = *reinterpret_cast<const int4*>(wr + c);
      const int8_t* b = reinterpret_cast<const int8_t*>(&packed);
      float wv[16];
#pragma unroll
      for (int e = 0; e < 16; ++e) wv[e] = static_cast<float>(b[e]);
#pragma unroll
      for (int r = 0; r < kMaxGemvRows; ++r) {
        if (r < n) {
          const float* xr = x + r * k + c;
#pragma unroll
          for (int e = 0; e < 16; ++e) acc[r] += wv[e] * xr[e];
        }
      }
    }
  } else {
    for (int64_t c = lane; c < k; c += 32) {
      const float wv = static_cast<float>(wr[c]);
#pragma unroll
      for (int r = 0; r < kMaxGemvRows; ++r) {
        if (r < n) acc[r] += wv * x[r * k + c];
      }
    }
  }
  const float s = scales[j];
#pragma unroll
  for (int r = 0; r < kMaxGemvRows; ++r) {
    if (r < n) {
      const float v = WarpSum(acc[r]);
      if (lane == 0) out[r * m + j] = v * s;
    }
  }
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchQuantizeRows(const float* w, int64_t m, int64_t k, int8_t* q,
                               float* scales, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  QuantizeRowsKernel<<<static_cast<unsigned>(m), kInt8Threads, 0, stream>>>(
      w, k, q, scales);
  return cudaGetLastError();
}

cudaError_t LaunchDequantizeRows(const int8_t* q, const float* scales,
                                 int64_t m, int64_t k, DType dst_type,
                                 void* dst, cudaStream_t stream) {
  const int64_t total = m * k;
  if (total == 0) return cudaSuccess;
  switch (dst_type) {
    case DType::kF32:
      DequantizeRowsKernel<<<Int8GridFor(total), kInt8Threads, 0, stream>>>(
          q, scales, total, k, static_cast<float*>(dst));
      break;
    case DType::kF16:
      DequantizeRowsKernel<<<Int8GridFor(total), kInt8Threads, 0, stream>>>(
          q, scales, total, k, static_cast<__half*>(dst));
      break;
    case DType::kBF16:
      DequantizeRowsKernel<<<Int8GridFor(total), kInt8Threads, 0, stream>>>(
          q, scales, total, k, static_cast<__nv_bfloat16*>(dst));
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchInt8Gemv(const float* x, const int8_t* w, const float* scales,
                           int64_t n, int64_t m, int64_t k, float* out,
                           cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (n > kMaxGemvRows) return cudaErrorInvalidValue;
  if (Int8GemvTiledSupports(x, w, n, k)) {
    return LaunchInt8GemvTiled(x, w, scales, n, m, k, out, stream);
  }
  const int64_t per_block = kInt8Threads / 32;
  Int8GemvKernel<<<static_cast<unsigned>((m + per_block - 1) / per_block),
                   kInt8Threads, 0, stream>>>(x, w, scales, static_cast<int>(n),
                                              m, k, out);
  return cudaGetLastError();
}

cudaError_t LaunchFindOutlierColumns(const float* x, int64_t n, int64_t k,
                                     float threshold, int32_t max_outliers,
                                     uint8_t* flags, int32_t* cols,
                                     int32_t* count, cudaStream_t stream) {
  if (cudaError_t e = cudaMemsetAsync(flags, 0, k, stream); e != cudaSuccess) {
    return e;
  }
  if (n * k > 0) {
    MarkOutliersKernel<<<Int8GridFor(n * k), kInt8Threads, 0, stream>>>(
        x, n * k, k, threshold, flags);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  CompactOutliersKernel<<<1, kCompactThreads, 0, stream>>>(k, max_outliers,
                                                           flags, cols, count);
  return cudaGetLastError();
}

cudaError_t LaunchQuantizeActivations(const float* x, int64_t n, int64_t k,
                                      const uint8_t* flags, const int32_t* cols,
                                      int32_t max_outliers, int8_t* xq,
                                      float* x_scales, void* x_outliers,
                                      cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  QuantizeActivationsKernel<<<static_cast<unsigned>(n), kInt8Threads, 0,
                              stream>>>(x, k, flags, cols, max_outliers, xq,
                                        x_scales,
                                        static_cast<__half*>(x_outliers));
  return cudaGetLastError();
}

cudaError_t LaunchGatherOutlierWeights(const int8_t* w, const float* scales,
                                       int64_t m, int64_t k,
                                       const int32_t* cols,
                                       int32_t max_outliers, void* w_outliers,
                                       cudaStream_t stream) {
  const int64_t total = m * max_outliers;
  if (total == 0) return cudaSuccess;
  GatherOutlierWeightsKernel<<<Int8GridFor(total), kInt8Threads, 0, stream>>>(
      w, scales, total, k, cols, max_outliers,
      static_cast<__half*>(w_outliers));
  return cudaGetLastError();
}

cudaError_t LaunchDequantizeInt8Product(const int32_t* acc,
                                        const float* x_scales,
                                        const float* w_scales,
                                        const float* outlier_out, int64_t n,
                                        int64_t m, float* out,
                                        cudaStream_t stream) {
  const int64_t total = n * m;
  if (total == 0) return cudaSuccess;
  DequantizeProductKernel<<<Int8GridFor(total), kInt8Threads, 0, stream>>>(
      acc, x_scales, w_scales, outlier_out, total, m, out);
  return cudaGetLastError();
}

}  // namespace strata::cuda
