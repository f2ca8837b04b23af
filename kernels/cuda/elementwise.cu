// Element-wise and row-wise kernels. Why written this way: these ops are pure
// memory traffic (about 2-3 bytes moved per flop), so each kernel is one pass
// over its data with grid-stride loops; the row reductions (RMSNorm) use one
// block per row with a fixed reduction tree, so a row's result never depends
// on the batch (batch invariance, docs/engine.md). Napkin figure: RMSNorm of
// [64, 4096] f32 moves 2 MiB, ~1 us at 3 TB/s -- launch-bound at decode,
// which is what CUDA graphs are for.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/elementwise.h"

namespace strata::cuda {
namespace {

// ---- kernels ----

template <typename T>
__global__ void EmbeddingGatherKernel(const T* __restrict__ table,
                                      const int32_t* __restrict__ ids,
                                      int64_t h, float* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const T* src = table + static_cast<int64_t>(ids[row]) * h;
  float* dst = out + row * h;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x)
    dst[j] = ToFloat(src[j]);
}

__global__ void AddKernel(const float* __restrict__ y, int64_t count,
                          float* __restrict__ x) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

__global__ void AddBiasKernel(const float* __restrict__ bias, int64_t count,
                              int64_t m, float* __restrict__ x) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += bias[i % m];
  }
}

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t count,
                              float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// One block per row: (optional residual add), sum of squares, scale.
__global__ void RmsNormKernel(const float* __restrict__ y, float* x,
                              const float* __restrict__ weight, int64_t h,
                              float eps, float* out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  float* xr = x + row * h;
  const float* yr = y == nullptr ? nullptr : y + row * h;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
    float v = xr[j];
    if (yr != nullptr) {
      v += yr[j];
      xr[j] = v;
    }
    sum += v * v;
  }
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(h) + eps);
  float* o = out + row * h;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
    o[j] = weight[j] * (xr[j] * inv);
  }
}

__global__ void GatherRowsKernel(const float* __restrict__ x,
                                 const int32_t* __restrict__ rows, int64_t h,
                                 float* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const float* src = x + static_cast<int64_t>(rows[r]) * h;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) out[r * h + j] = src[j];
}

template <typename T>
__global__ void ConvertKernel(const float* __restrict__ src, int64_t count,
                              T* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<T>(src[i]);
  }
}

// ---- launcher helpers ----

constexpr int kThreads = 256;

unsigned GridFor(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65535 * 8));
}

int RowThreads(int64_t h) {
  return h >= 1024 ? 1024 : h >= 512 ? 512 : h >= 256 ? 256 : 128;
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchEmbeddingGather(const void* table, DType table_type,
                                  const int32_t* ids, int64_t n, int64_t h,
                                  float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(n));
  const int threads = RowThreads(h);
  switch (table_type) {
    case DType::kF32:
      EmbeddingGatherKernel<<<grid, threads, 0, stream>>>(
          static_cast<const float*>(table), ids, h, out);
      break;
    case DType::kF16:
      EmbeddingGatherKernel<<<grid, threads, 0, stream>>>(
          static_cast<const __half*>(table), ids, h, out);
      break;
    case DType::kBF16:
      EmbeddingGatherKernel<<<grid, threads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(table), ids, h, out);
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchAdd(const float* y, int64_t count, float* x,
                      cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  AddKernel<<<GridFor(count), kThreads, 0, stream>>>(y, count, x);
  return cudaGetLastError();
}

cudaError_t LaunchAddBias(const float* bias, int64_t n, int64_t m, float* x,
                          cudaStream_t stream) {
  const int64_t count = n * m;
  if (count == 0) return cudaSuccess;
  AddBiasKernel<<<GridFor(count), kThreads, 0, stream>>>(bias, count, m, x);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t count,
                          float* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  SiluMulKernel<<<GridFor(count), kThreads, 0, stream>>>(gate, up, count, out);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* y, float* x, const float* weight,
                          int64_t n, int64_t h, float eps, float* out,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned>(n), RowThreads(h), 0, stream>>>(
      y, x, weight, h, eps, out);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* x, const int32_t* rows, int64_t r,
                             int64_t h, float* out, cudaStream_t stream) {
  if (r == 0) return cudaSuccess;
  GatherRowsKernel<<<static_cast<unsigned>(r), RowThreads(h), 0, stream>>>(
      x, rows, h, out);
  return cudaGetLastError();
}

cudaError_t LaunchConvertF32(const float* src, int64_t count, DType dst_type,
                             void* dst, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  switch (dst_type) {
    case DType::kF32:
      return cudaMemcpyAsync(dst, src, count * sizeof(float),
                             cudaMemcpyDeviceToDevice, stream);
    case DType::kF16:
      ConvertKernel<<<GridFor(count), kThreads, 0, stream>>>(
          src, count, static_cast<__half*>(dst));
      break;
    case DType::kBF16:
      ConvertKernel<<<GridFor(count), kThreads, 0, stream>>>(
          src, count, static_cast<__nv_bfloat16*>(dst));
      break;
  }
  return cudaGetLastError();
}

}  // namespace strata::cuda
