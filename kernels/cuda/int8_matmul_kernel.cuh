// The LLM.int8() passes around the int8 GEMM, and the weights' row-wise
// quantization at upload (see int8_matmul.h for the steps): device code only,
// included by int8_matmul.cu and, compiled for the host under the SIMT
// emulator, by tests/cuda/emulated_llm_int8_test.cc, which checks them
// against the CPU backend's LLM.int8() without a GPU. The unnamed namespace
// is deliberate (see decode_attention_kernel.cuh).
#ifndef STRATA_KERNELS_CUDA_INT8_MATMUL_KERNEL_CUH_
#define STRATA_KERNELS_CUDA_INT8_MATMUL_KERNEL_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"

namespace strata::cuda {
namespace {

// Threads per CTA of every pass here but the compaction (one CTA per row,
// or a grid-stride loop over elements), and of the compaction's single CTA.
constexpr int kInt8Threads = 256;
constexpr int kCompactThreads = 1024;

// The grid of a grid-stride pass over `count` elements.
inline unsigned Int8GridFor(int64_t count) {
  const int64_t blocks = (count + kInt8Threads - 1) / kInt8Threads;
  return static_cast<unsigned>(blocks < 1        ? 1
                               : blocks > 524288 ? 524288
                                                 : blocks);
}

__device__ __forceinline__ int8_t QuantizeValue(float v, float inv_scale) {
  float q = rintf(v * inv_scale);
  q = fminf(127.0f, fmaxf(-127.0f, q));
  return static_cast<int8_t>(q);
}

// max |row[j]| over the columns not flagged (flags null: all of them), in
// every thread of the CTA.
__device__ __forceinline__ float RowAbsMax(const float* row, int64_t k,
                                           const uint8_t* flags,
                                           float* scratch) {
  float amax = 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    if (flags == nullptr || flags[j] == 0) amax = fmaxf(amax, fabsf(row[j]));
  }
  return BlockMax(amax, scratch);
}

// One block per row: absmax, then quantize.
__global__ void QuantizeRowsKernel(const float* __restrict__ w, int64_t k,
                                   int8_t* __restrict__ q,
                                   float* __restrict__ scales) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* wr = w + row * k;
  const float amax = RowAbsMax(wr, k, nullptr, scratch);
  const float scale = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    q[row * k + j] = QuantizeValue(wr[j], inv);
  }
  if (threadIdx.x == 0) scales[row] = scale;
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
  const float amax = RowAbsMax(xr, k, flags, scratch);
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

}  // namespace
}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_INT8_MATMUL_KERNEL_CUH_
