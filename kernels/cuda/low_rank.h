// The gathered, segmented low-rank (LoRA) product on the GPU: for a batch
// whose rows belong to different loops of a recursive model, every row adds
// the low-rank delta of its own loop's pair,
//   out[i] += (x[i] A_s^T) B_s^T,   s = the segment of row i,
// for all segments in two launches (shrink to rank r, expand back to m),
// instead of two GEMMs and an add per segment.
#ifndef STRATA_KERNELS_CUDA_LOW_RANK_H_
#define STRATA_KERNELS_CUDA_LOW_RANK_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::cuda {

// The largest rank the kernels take (a row's r intermediate values live in
// shared memory); the backend falls back to GEMMs above it.
inline constexpr int32_t kMaxLowRank = 256;

// One segment's factors (device pointers, f32, row-major).
struct LowRankPair {
  const float* a = nullptr;  // [r, k]
  const float* b = nullptr;  // [m, r] (already scaled by alpha / r)
};

// out[i] += (x[i] pairs[s].a^T) pairs[s].b^T for s = row_segment[i] >= 0;
// rows with row_segment[i] < 0 are left as they are.
//   x: [n, k] f32, out: [n, m] f32 (not aliasing x)
//   row_segment: [n] device, each < num_pairs or negative
//   pairs: [num_pairs] device
//   t: [n, r] f32 device workspace
// 1 <= r <= kMaxLowRank. Each output element is written by one thread with a
// fixed summation order, so a row's result does not depend on the batch.
cudaError_t LaunchSegmentedLowRank(const float* x, int64_t n, int64_t k,
                                   int64_t m, int32_t r,
                                   const int32_t* row_segment,
                                   const LowRankPair* pairs, float* t,
                                   float* out, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_LOW_RANK_H_
