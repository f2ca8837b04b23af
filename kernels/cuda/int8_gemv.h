// Weight-only int8 GEMV for decode batches of 1..kMaxGemvRows rows: int8
// weights [m, k] with per-output-channel f32 scales, read once at (the aim)
// near memory bandwidth and dequantized in registers; x and the sums stay
// f32. LaunchInt8Gemv (int8_matmul.h) uses it when k % 16 == 0 and x, w are
// 16-byte aligned, its warp-per-channel kernel otherwise.
#ifndef STRATA_KERNELS_CUDA_INT8_GEMV_H_
#define STRATA_KERNELS_CUDA_INT8_GEMV_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define STRATA_HOST_DEVICE __host__ __device__
#else
#define STRATA_HOST_DEVICE
#endif

namespace strata::cuda {

// Byte i (0..3, little end first) of a packed word of four int8 values as
// f32, without an int-to-float instruction (a quarter-rate unit that would
// cap the GEMV below bandwidth): the biased byte b + 128 is placed in the
// low mantissa of 2^23, then 2^23 + 128 is subtracted (both exact).
STRATA_HOST_DEVICE inline float Int8LaneToFloat(uint32_t word, int i) {
  const uint32_t bits = 0x4B000000u | (((word >> (8 * i)) & 0xffu) ^ 0x80u);
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits) - 8388736.0f;
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f - 8388736.0f;
#endif
}

// True when LaunchInt8GemvTiled takes the shape (else the caller's fallback).
bool Int8GemvTiledSupports(const float* x, const int8_t* w, int64_t n,
                           int64_t k);

// out[i][j] = scales[j] * sum_p x[i][p] * w[j][p] for n <= 16 rows.
//   x: [n, k] f32, w: [m, k] int8, scales: [m], out: [n, m] f32
cudaError_t LaunchInt8GemvTiled(const float* x, const int8_t* w,
                                const float* scales, int64_t n, int64_t m,
                                int64_t k, float* out, cudaStream_t stream);

// The LLM.int8() inlier product for n <= 16 rows, in place of the cuBLASLt
// int8 GEMM (which, like any GEMM at a handful of rows, does not stream the
// weights at bandwidth): acc[i][j] = sum_p xq[i][p] * w[j][p], exact int32.
//   xq: [n, k] int8, w: [m, k] int8, acc: [n, m] int32
bool Int8DotGemvSupports(const int8_t* xq, const int8_t* w, int64_t n,
                         int64_t k);
cudaError_t LaunchInt8DotGemv(const int8_t* xq, const int8_t* w, int64_t n,
                              int64_t m, int64_t k, int32_t* acc,
                              cudaStream_t stream);

}  // namespace strata::cuda

#undef STRATA_HOST_DEVICE

#endif  // STRATA_KERNELS_CUDA_INT8_GEMV_H_
