// What an early-exit confidence needs from a row of logits: its largest
// value and the softmax denominator sum_j exp(x[j] - max). The engine
// evaluates this over the whole vocabulary for every row at every exit
// boundary (engine/exit_policy.h), on the engine thread, so it is vectorised:
// libm's expf one element at a time was about a tenth of a depth-wise
// serving profile with exits.
//
// The result is bit-identical across ISAs: the exponential of
// kernels/cpu/simd_exp.h (one fixed sequence of fused multiply-adds),
// element j summed into lane j % 16 in index order, and the 16 lanes
// combined by one fixed tree.
#ifndef STRATA_KERNELS_CPU_SOFTMAX_STATS_H_
#define STRATA_KERNELS_CPU_SOFTMAX_STATS_H_

#include <cstdint>

#include "kernels/cpu/isa.h"

namespace strata::cpu {

struct SoftmaxStats {
  float max = 0.0f;      // largest element
  float sum_exp = 0.0f;  // sum_j exp(x[j] - max), >= 1
};

// x: [m], m >= 1, finite. exp(t) for t < -87 counts as exp(-87) (< 2e-38,
// far below the sum's precision); relative error of each exp <= ~2 ulp.
SoftmaxStats ComputeSoftmaxStats(Isa isa, const float* x, int64_t m);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_SOFTMAX_STATS_H_
