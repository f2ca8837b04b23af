// Segmented low-rank products. Why written this way: the rank is small (8-64)
// and the rows of one step are few, so the work is two thin products that
// cuBLAS would run as 2 x (number of loops) tiny GEMMs plus adds, each
// launch-bound. Here one launch computes every row's r values t = x A^T (a
// warp per output value, lanes striding k: coalesced reads of x and of A's
// row), and one launch adds t B^T (a thread per output element, t in shared
// memory). Napkin figure: Llama-7B-sized q_proj (k = m = 4096) at r = 16 and
// 64 rows reads A and B (2 x 256 KiB per loop) and x/out (2 MiB): ~1 us of
// traffic at 3 TB/s per projection, against ~3 GEMM launches per loop before.
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/low_rank.h"

namespace strata::cuda {
namespace {

constexpr int kShrinkThreads = 128;  // 4 warps, each computing values of t
constexpr int kExpandThreads = 256;

// ---- kernels ----

// CTA = one row i: t[i][j] = sum_c x[i][c] * a[j][c] for j < r.
__global__ void ShrinkKernel(const float* __restrict__ x, int64_t k, int32_t r,
                             const int32_t* __restrict__ row_segment,
                             const LowRankPair* __restrict__ pairs,
                             float* __restrict__ t) {
  const int64_t row = blockIdx.x;
  const int32_t s = row_segment[row];
  if (s < 0) return;
  const float* a = pairs[s].a;
  const float* xr = x + row * k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int32_t j = warp; j < r; j += warps) {
    const float* aj = a + static_cast<int64_t>(j) * k;
    float acc = 0.0f;
    for (int64_t c = lane; c < k; c += 32) acc = fmaf(xr[c], aj[c], acc);
    acc = WarpSum(acc);
    if (lane == 0) t[row * r + j] = acc;
  }
}

// CTA (row i, column tile): out[i][col] += sum_j t[i][j] * b[col][j].
__global__ void ExpandKernel(const float* __restrict__ t, int64_t m, int32_t r,
                             const int32_t* __restrict__ row_segment,
                             const LowRankPair* __restrict__ pairs,
                             float* __restrict__ out) {
  __shared__ float tr[kMaxLowRank];
  const int64_t row = blockIdx.x;
  const int32_t s = row_segment[row];
  if (s < 0) return;  // uniform across the CTA: no thread reaches the barrier
  for (int j = threadIdx.x; j < r; j += blockDim.x) tr[j] = t[row * r + j];
  __syncthreads();
  const int64_t col =
      blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= m) return;
  const float* bc = pairs[s].b + col * r;
  float acc = 0.0f;
  for (int32_t j = 0; j < r; ++j) acc = fmaf(tr[j], bc[j], acc);
  out[row * m + col] += acc;
}

}  // namespace

// ---- launchers ----

cudaError_t LaunchSegmentedLowRank(const float* x, int64_t n, int64_t k,
                                   int64_t m, int32_t r,
                                   const int32_t* row_segment,
                                   const LowRankPair* pairs, float* t,
                                   float* out, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (r < 1 || r > kMaxLowRank || k < 0 || n > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  const int64_t col_tiles = (m + kExpandThreads - 1) / kExpandThreads;
  if (col_tiles > 65535) return cudaErrorInvalidValue;
  ShrinkKernel<<<static_cast<unsigned>(n), kShrinkThreads, 0, stream>>>(
      x, k, r, row_segment, pairs, t);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(col_tiles));
  ExpandKernel<<<grid, kExpandThreads, 0, stream>>>(t, m, r, row_segment, pairs,
                                                    out);
  return cudaGetLastError();
}

}  // namespace strata::cuda
