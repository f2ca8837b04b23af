// Exit confidences. Why written this way: an exit check needs two numbers
// per row (max and softmax denominator, plus the runner-up for the margin)
// out of a vocabulary-long row; one CTA per row reads the row twice (max,
// then exponentials, the runner-up and a tie count in one pass) with fixed
// reduction trees. Napkin figure: 64 rows x 128k vocab = 32 MiB read twice,
// ~20 us at 3 TB/s, against copying those 32 MiB to the host over PCIe
// (~1 ms) before.
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/exit_confidence.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 512;

// ---- kernels ----

// CTA = one row.
__global__ void ExitConfidenceKernel(const float* __restrict__ logits,
                                     int64_t vocab,
                                     const uint8_t* __restrict__ kinds,
                                     float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* x = logits + blockIdx.x * vocab;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, x[j]);
  m = BlockMax(m, scratch);
  float ties = 0.0f, second = -INFINITY, sum = 0.0f;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = x[j];
    if (v == m) {
      ties += 1.0f;
    } else {
      second = fmaxf(second, v);
    }
    sum += expf(v - m);
  }
  ties = BlockSum(ties, scratch);
  second = BlockMax(second, scratch);
  sum = BlockSum(sum, scratch);
  if (threadIdx.x != 0) return;
  const float p1 = 1.0f / sum;
  if (kinds[blockIdx.x] == 0) {
    out[blockIdx.x] = p1;
    return;
  }
  const float top2 = ties >= 2.0f ? m : second;
  out[blockIdx.x] = p1 - expf(top2 - m) / sum;
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchExitConfidence(const float* logits, int64_t rows,
                                 int64_t vocab, const uint8_t* kinds,
                                 float* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab < 1 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  ExitConfidenceKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, vocab, kinds, out);
  return cudaGetLastError();
}

}  // namespace strata::cuda
