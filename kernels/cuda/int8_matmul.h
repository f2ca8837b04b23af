// int8 weights on the GPU: quantization at load, the weight-only int8
// GEMV for decode, and the pieces of LLM.int8() (Dettmers et al. 2022):
//
//   x [n, k] f32 -> outlier columns (any |x| >= threshold, at most
//   max_outliers, in column order) kept in f16; the other columns quantized
//   row-wise (absmax / 127) to int8; int8 GEMM with the column-wise (per
//   output channel) int8 weights in int32 (cuBLASLt, see gemm.h); one fused
//   kernel then computes out = acc * x_scale[i] * w_scale[j] + outlier
//   product, where the outlier product is a small f16 GEMM of the outlier
//   columns of x with the same columns of the weights, dequantized.
//
// Weight format (both int8 modes): w [m, k] int8 row-major (row = output
// channel) and scales [m] f32 with w_f32 ~= w * scale, scale = absmax / 127.
#ifndef STRATA_KERNELS_CUDA_INT8_MATMUL_H_
#define STRATA_KERNELS_CUDA_INT8_MATMUL_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/dtype.h"

namespace strata::cuda {

inline constexpr int32_t kMaxGemvRows = 16;  // weight-only GEMV batch limit

// Per-row absmax quantization. w: [m, k] f32 -> q: [m, k] int8, scales: [m]
cudaError_t LaunchQuantizeRows(const float* w, int64_t m, int64_t k, int8_t* q,
                               float* scales, cudaStream_t stream);

// dst = q * scale per row, as dst_type. q: [m, k], scales: [m], dst: [m, k]
cudaError_t LaunchDequantizeRows(const int8_t* q, const float* scales,
                                 int64_t m, int64_t k, DType dst_type,
                                 void* dst, cudaStream_t stream);

// Weight-only int8: out[i][j] = scales[j] * sum_k x[i][k] * w[j][k], for
// n <= kMaxGemvRows. x: [n, k] f32, w: [m, k] int8, out: [n, m] f32.
// The tiled kernel of int8_gemv.h when it applies (k % 16 == 0, aligned),
// a warp per output channel otherwise.
cudaError_t LaunchInt8Gemv(const float* x, const int8_t* w, const float* scales,
                           int64_t n, int64_t m, int64_t k, float* out,
                           cudaStream_t stream);

// LLM.int8() step 1: the outlier columns of x. flags: [k] uint8 scratch;
// cols: [max_outliers] int32 (column ids in increasing order, the rest -1);
// count: [1] int32. Columns past max_outliers stay in the int8 path.
cudaError_t LaunchFindOutlierColumns(const float* x, int64_t n, int64_t k,
                                     float threshold, int32_t max_outliers,
                                     uint8_t* flags, int32_t* cols,
                                     int32_t* count, cudaStream_t stream);

// Step 2: row-wise int8 of the non-outlier columns (outliers zeroed) and the
// f16 outlier columns. flags: from step 1 (1 = outlier kept in f16)
//   xq: [n, k] int8, x_scales: [n] f32, x_outliers: [n, max_outliers] f16
cudaError_t LaunchQuantizeActivations(const float* x, int64_t n, int64_t k,
                                      const uint8_t* flags, const int32_t* cols,
                                      int32_t max_outliers, int8_t* xq,
                                      float* x_scales, void* x_outliers,
                                      cudaStream_t stream);

// Step 3: w_outliers[j][c] = w[j][cols[c]] * scales[j] as f16 (0 for c past
// the count). w: [m, k] int8, w_outliers: [m, max_outliers] f16
cudaError_t LaunchGatherOutlierWeights(const int8_t* w, const float* scales,
                                       int64_t m, int64_t k,
                                       const int32_t* cols,
                                       int32_t max_outliers, void* w_outliers,
                                       cudaStream_t stream);

// Step 5 (fused): out[i][j] = acc[i][j] * x_scales[i] * w_scales[j] +
// (outlier_out ? outlier_out[i][j] : 0). acc: [n, m] int32, out: [n, m] f32
cudaError_t LaunchDequantizeInt8Product(const int32_t* acc,
                                        const float* x_scales,
                                        const float* w_scales,
                                        const float* outlier_out, int64_t n,
                                        int64_t m, float* out,
                                        cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_INT8_MATMUL_H_
