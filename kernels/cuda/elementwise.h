// Token-wise ops of the forward pass on the GPU: embedding gather, residual
// and bias adds, SwiGLU, RMSNorm (plain and fused with the residual add), row
// gather and f32 -> f16/bf16 conversion.
//
// Activations are f32 (the residual stream keeps full precision; the GEMMs
// convert their input to the weights' 16-bit type). Every launcher enqueues on
// `stream` and returns the launch error (cudaSuccess when queued).
#ifndef STRATA_KERNELS_CUDA_ELEMENTWISE_H_
#define STRATA_KERNELS_CUDA_ELEMENTWISE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/dtype.h"

namespace strata::cuda {

// out[i] = table[ids[i]]. table: [vocab, h] of table_type, ids: [n] (device,
// in range), out: [n, h] f32
cudaError_t LaunchEmbeddingGather(const void* table, DType table_type,
                                  const int32_t* ids, int64_t n, int64_t h,
                                  float* out, cudaStream_t stream);

// x[i] += y[i]. x, y: [count]
cudaError_t LaunchAdd(const float* y, int64_t count, float* x,
                      cudaStream_t stream);

// x[i][j] += bias[j]. x: [n, m], bias: [m]
cudaError_t LaunchAddBias(const float* bias, int64_t n, int64_t m, float* x,
                          cudaStream_t stream);

// out = silu(gate) * up. gate, up, out: [count] (out may alias either)
cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t count,
                          float* out, cudaStream_t stream);

// Llama RMSNorm: out[i][j] = weight[j] * x[i][j] / sqrt(mean_j x^2 + eps).
// If y != nullptr, first x += y (residual add fused: one pass over x).
// x, y, out: [n, h] (out may alias x), weight: [h] f32
cudaError_t LaunchRmsNorm(const float* y, float* x, const float* weight,
                          int64_t n, int64_t h, float eps, float* out,
                          cudaStream_t stream);

// out[i] = x[rows[i]]. x: [*, h], rows: [r] (device), out: [r, h]
cudaError_t LaunchGatherRows(const float* x, const int32_t* rows, int64_t r,
                             int64_t h, float* out, cudaStream_t stream);

// dst[i] = convert(src[i]) (round to nearest). src: [count] f32, dst: [count]
// of dst_type.
cudaError_t LaunchConvertF32(const float* src, int64_t count, DType dst_type,
                             void* dst, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_ELEMENTWISE_H_
