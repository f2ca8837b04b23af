// Summary statistics of latency samples, computed the way vLLM's serving
// benchmark computes them (numpy's mean, std and linear-interpolation
// percentile), so that figures from both tools can be compared directly.
#ifndef STRATA_BENCH_STATS_H_
#define STRATA_BENCH_STATS_H_

#include <vector>

namespace strata::bench {

// The percentile `p` (in [0, 100]) of `sorted` (ascending), interpolating
// linearly between the two nearest ranks (numpy.percentile's default).
// Returns 0 for an empty input.
double Percentile(const std::vector<double>& sorted, double p);

// Mean, population standard deviation and the percentiles Strata reports.
struct Summary {
  double mean = 0;
  double median = 0;  // == p50; kept apart because vLLM reports both names
  double std = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
};

// Summarizes `values` (any order; empty gives all zeros). `scale` multiplies
// every figure (1000 turns seconds into milliseconds).
Summary Summarize(std::vector<double> values, double scale = 1.0);

}  // namespace strata::bench

#endif  // STRATA_BENCH_STATS_H_
