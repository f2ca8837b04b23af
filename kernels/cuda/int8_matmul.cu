// int8 kernels. Why written this way: decode with int8 weights is bound by
// reading the weights (~1 byte per weight, half of bf16's traffic). The GEMV
// is int8_gemv.cu's tiled kernel; the one here (a warp per output channel,
// 16-byte loads when k % 16 == 0, up to kMaxGemvRows partial sums in
// registers) is the fallback for other shapes. The LLM.int8() pieces around the
// cuBLASLt int8 GEMM are memory passes over the activations; outlier detection
// is a grid-wide flag pass plus a single-CTA ordered compaction so the chosen
// columns (and so the rounding) are deterministic.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/int8_gemv.h"
#include "kernels/cuda/int8_matmul.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int8_t QuantizeValue(float v, float inv_scale) {
  float q = rintf(v * inv_scale);
  q = fminf(127.0f, fmaxf(-127.0f, q));
  return static_cast<int8_t>(q);
}

// ---- kernels ----

// One block per row: absmax, then quantize.
__global__ void QuantizeRowsKernel(const float* __restrict__ w, int64_t k,
                                   int8_t* __restrict__ q,
                                   float* __restrict__ scales) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* wr = w + row * k;
  float amax = 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    amax = fmaxf(amax, fabsf(wr[j]));
  }
  amax = BlockMax(amax, scratch);
  const float scale = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    q[row * k + j] = QuantizeValue(wr[j], inv);
  }
  if (threadIdx.x == 0) scales[row] = scale;
}

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

// One warp per output channel j; kThreads / 32 channels per block.
__global__ void Int8GemvKernel(const float* __restrict__ x,
                               const int8_t* __restrict__ w,
                               const float* __restrict__ scales, int n,
                               int64_t m, int64_t k, float* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t j =
      static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
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

__global__ void MarkOutliersKernel(const float* __restrict__ x, int64_t total,
                                   int64_t k, float threshold,
                                   uint8_t* __restrict__ flags) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (fabsf(x[i]) >= threshold) flags[i % k] = 1;
  }
}

// Single block: keeps the first max_outliers flagged columns in column order.
__global__ void CompactOutliersKernel(int64_t k, int32_t max_outliers,
                                      uint8_t* __restrict__ flags,
                                      int32_t* __restrict__ cols,
                                      int32_t* __restrict__ count) {
  __shared__ int scratch[32];
  for (int c = threadIdx.x; c < max_outliers; c += blockDim.x) cols[c] = -1;
  __syncthreads();
  int taken = 0;
  for (int64_t base = 0; base < k; base += blockDim.x) {
    const int64_t c = base + threadIdx.x;
    const bool flagged = c < k && flags[c] != 0;
    int chunk = 0;
    const int rank =
        taken + BlockExclusiveScan(flagged ? 1 : 0, scratch, &chunk);
    if (flagged) {
      if (rank < max_outliers) {
        cols[rank] = static_cast<int32_t>(c);
      } else {
        flags[c] = 0;  // over the cap: stays in the int8 path
      }
    }
    taken += chunk;
  }
  if (threadIdx.x == 0) *count = taken < max_outliers ? taken : max_outliers;
}

// One block per row.
__global__ void QuantizeActivationsKernel(
    const float* __restrict__ x, int64_t k, const uint8_t* __restrict__ flags,
    const int32_t* __restrict__ cols, int32_t max_outliers,
    int8_t* __restrict__ xq, float* __restrict__ x_scales,
    __half* __restrict__ x_outliers) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * k;
  float amax = 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    if (flags[j] == 0) amax = fmaxf(amax, fabsf(xr[j]));
  }
  amax = BlockMax(amax, scratch);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    xq[row * k + j] = flags[j] != 0 ? int8_t{0} : QuantizeValue(xr[j], inv);
  }
  for (int c = threadIdx.x; c < max_outliers; c += blockDim.x) {
    const int32_t col = cols[c];
    x_outliers[row * max_outliers + c] =
        __float2half_rn(col >= 0 ? xr[col] : 0.0f);
  }
  if (threadIdx.x == 0) x_scales[row] = amax / 127.0f;
}

__global__ void GatherOutlierWeightsKernel(const int8_t* __restrict__ w,
                                           const float* __restrict__ scales,
                                           int64_t total, int64_t k,
                                           const int32_t* __restrict__ cols,
                                           int32_t max_outliers,
                                           __half* __restrict__ w_outliers) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i / max_outliers;
    const int32_t col = cols[i % max_outliers];
    w_outliers[i] = __float2half_rn(
        col >= 0 ? static_cast<float>(w[j * k + col]) * scales[j] : 0.0f);
  }
}

__global__ void DequantizeProductKernel(const int32_t* __restrict__ acc,
                                        const float* __restrict__ x_scales,
                                        const float* __restrict__ w_scales,
                                        const float* __restrict__ outlier_out,
                                        int64_t total, int64_t m,
                                        float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = static_cast<float>(acc[i]) * (x_scales[i / m] * w_scales[i % m]);
    if (outlier_out != nullptr) v += outlier_out[i];
    out[i] = v;
  }
}

unsigned GridFor(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1        ? 1
                               : blocks > 524288 ? 524288
                                                 : blocks);
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchQuantizeRows(const float* w, int64_t m, int64_t k, int8_t* q,
                               float* scales, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  QuantizeRowsKernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(w, k, q,
                                                                        scales);
  return cudaGetLastError();
}

cudaError_t LaunchDequantizeRows(const int8_t* q, const float* scales,
                                 int64_t m, int64_t k, DType dst_type,
                                 void* dst, cudaStream_t stream) {
  const int64_t total = m * k;
  if (total == 0) return cudaSuccess;
  switch (dst_type) {
    case DType::kF32:
      DequantizeRowsKernel<<<GridFor(total), kThreads, 0, stream>>>(
          q, scales, total, k, static_cast<float*>(dst));
      break;
    case DType::kF16:
      DequantizeRowsKernel<<<GridFor(total), kThreads, 0, stream>>>(
          q, scales, total, k, static_cast<__half*>(dst));
      break;
    case DType::kBF16:
      DequantizeRowsKernel<<<GridFor(total), kThreads, 0, stream>>>(
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
  const int64_t per_block = kThreads / 32;
  Int8GemvKernel<<<static_cast<unsigned>((m + per_block - 1) / per_block),
                   kThreads, 0, stream>>>(x, w, scales, static_cast<int>(n), m,
                                          k, out);
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
    MarkOutliersKernel<<<GridFor(n * k), kThreads, 0, stream>>>(
        x, n * k, k, threshold, flags);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  CompactOutliersKernel<<<1, 1024, 0, stream>>>(k, max_outliers, flags, cols,
                                                count);
  return cudaGetLastError();
}

cudaError_t LaunchQuantizeActivations(const float* x, int64_t n, int64_t k,
                                      const uint8_t* flags, const int32_t* cols,
                                      int32_t max_outliers, int8_t* xq,
                                      float* x_scales, void* x_outliers,
                                      cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  QuantizeActivationsKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      x, k, flags, cols, max_outliers, xq, x_scales,
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
  GatherOutlierWeightsKernel<<<GridFor(total), kThreads, 0, stream>>>(
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
  DequantizeProductKernel<<<GridFor(total), kThreads, 0, stream>>>(
      acc, x_scales, w_scales, outlier_out, total, m, out);
  return cudaGetLastError();
}

}  // namespace strata::cuda
