// A/B comparison of strata-bench result files: bench/compare.sh runs the same
// workload against daemon configurations A and B in alternating rounds and
// hands the per-round JSON files here. Each figure is averaged over rounds
// and shown with its spread and the ratio B/A.
#ifndef STRATA_BENCH_COMPARE_H_
#define STRATA_BENCH_COMPARE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace strata::bench {

// Reads one result file written by strata-bench --result_json.
absl::StatusOr<nlohmann::json> LoadResultJson(const std::string& path);

struct ComparisonRow {
  std::string name;  // a MetricNames() entry
  double a_mean = 0, a_min = 0, a_max = 0;
  double b_mean = 0, b_min = 0, b_max = 0;
  double ratio = 0;  // b_mean / a_mean; NaN when a_mean is 0
  bool higher_is_better = false;
};

// One row per figure present in every result. Fails when a side is empty.
absl::StatusOr<std::vector<ComparisonRow>> CompareResults(
    const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b);

// The comparison as a table (and the rounds count) for the terminal.
std::string FormatComparison(const std::vector<ComparisonRow>& rows,
                             const std::string& a_label,
                             const std::string& b_label, size_t rounds_a,
                             size_t rounds_b);

// The rows as JSON: {"figure": {"a": mean, "b": mean, "ratio": r, ...}}.
nlohmann::ordered_json ComparisonToJson(const std::vector<ComparisonRow>& rows);

}  // namespace strata::bench

#endif  // STRATA_BENCH_COMPARE_H_
