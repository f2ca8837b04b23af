// SoftmaxStats: the two numbers every softmax over a row of logits needs.
// Backends compute them (Backend::RowSoftmaxStats: the CPU backend with its
// vectorised kernel, the same bits on every ISA); the host-side sampler and
// exit measures consume them.
#ifndef STRATA_ENGINE_SOFTMAX_STATS_H_
#define STRATA_ENGINE_SOFTMAX_STATS_H_

namespace strata {

struct SoftmaxStats {
  float max = 0.0f;      // the row's largest value
  double sum_exp = 0.0;  // sum_j exp(x_j - max); 0 when max is not finite
};

}  // namespace strata

#endif  // STRATA_ENGINE_SOFTMAX_STATS_H_
