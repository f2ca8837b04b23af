// RoPE. Why written this way: one thread per (row, head, pair i), reading the
// pair (i, i + d/2) and the table row of its position; pure memory traffic,
// no shared memory needed. The table is the CPU's, so the angles match.
#include <cstdint>

#include "kernels/cuda/rope.h"

namespace strata::cuda {
namespace {

// ---- kernels ----

__global__ void RopeKernel(const float* __restrict__ table,
                           const int32_t* __restrict__ positions,
                           int64_t total_pairs, int64_t num_heads,
                           int64_t head_dim, float* __restrict__ x) {
  const int64_t half = head_dim / 2;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       t < total_pairs; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t % half;
    const int64_t head = (t / half) % num_heads;
    const int64_t row = t / (half * num_heads);
    const float* trow = table + static_cast<int64_t>(positions[row]) * head_dim;
    const float c = trow[i], s = trow[half + i];
    float* h = x + row * num_heads * head_dim + head * head_dim;
    const float a = h[i], b = h[i + half];
    h[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    h[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  }
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchRope(const float* table, const int32_t* positions, int64_t n,
                       int64_t num_heads, int64_t head_dim, float* x,
                       cudaStream_t stream) {
  const int64_t total = n * num_heads * (head_dim / 2);
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  RopeKernel<<<static_cast<unsigned>(blocks < 524288 ? blocks : 524288),
               kThreads, 0, stream>>>(table, positions, total, num_heads,
                                      head_dim, x);
  return cudaGetLastError();
}

}  // namespace strata::cuda
