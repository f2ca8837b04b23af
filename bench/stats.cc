#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace strata::bench {

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  p = std::clamp(p, 0.0, 100.0);
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * fraction;
}

Summary Summarize(std::vector<double> values, double scale) {
  Summary summary;
  if (values.empty()) return summary;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  const double n = static_cast<double>(values.size());
  const double mean = sum / n;
  double squares = 0;
  for (double v : values) squares += (v - mean) * (v - mean);
  summary.mean = mean * scale;
  summary.std = std::sqrt(squares / n) * scale;
  summary.p50 = Percentile(values, 50) * scale;
  summary.median = summary.p50;
  summary.p90 = Percentile(values, 90) * scale;
  summary.p99 = Percentile(values, 99) * scale;
  return summary;
}

}  // namespace strata::bench
