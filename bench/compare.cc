#include "bench/compare.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/metrics.h"

namespace strata::bench {
namespace {

std::string Number(double value) {
  if (std::isnan(value)) return "n/a";
  if (std::fabs(value) >= 1e5 || value == std::floor(value)) {
    return absl::StrFormat("%.0f", value);
  }
  return absl::StrFormat("%.2f", value);
}

}  // namespace

absl::StatusOr<nlohmann::json> LoadResultJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str(), /*cb=*/nullptr,
                                              /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a strata-bench result (JSON object)"));
  }
  return json;
}

absl::StatusOr<std::vector<ComparisonRow>> CompareResults(
    const std::vector<nlohmann::json>& a,
    const std::vector<nlohmann::json>& b) {
  if (a.empty() || b.empty()) {
    return absl::InvalidArgumentError("need at least one result per side");
  }
  std::vector<ComparisonRow> rows;
  for (const std::string& name : MetricNames()) {
    auto present = [&](const std::vector<nlohmann::json>& side) {
      return std::all_of(side.begin(), side.end(), [&](const auto& j) {
        return j.contains(name) && j[name].is_number();
      });
    };
    if (!present(a) || !present(b)) continue;
    ComparisonRow row;
    row.name = name;
    row.higher_is_better = HigherIsBetter(name);
    auto fill = [&](const std::vector<nlohmann::json>& side, double* mean,
                    double* lo, double* hi) {
      double sum = 0;
      *lo = std::numeric_limits<double>::infinity();
      *hi = -std::numeric_limits<double>::infinity();
      for (const auto& j : side) {
        const double v = j[name].get<double>();
        sum += v;
        *lo = std::min(*lo, v);
        *hi = std::max(*hi, v);
      }
      *mean = sum / static_cast<double>(side.size());
    };
    fill(a, &row.a_mean, &row.a_min, &row.a_max);
    fill(b, &row.b_mean, &row.b_min, &row.b_max);
    row.ratio = row.a_mean != 0 ? row.b_mean / row.a_mean
                                : std::numeric_limits<double>::quiet_NaN();
    rows.push_back(row);
  }
  return rows;
}

std::string FormatComparison(const std::vector<ComparisonRow>& rows,
                             const std::string& a_label,
                             const std::string& b_label, size_t rounds_a,
                             size_t rounds_b) {
  std::string out = absl::StrFormat(
      "A = %s (%d rounds)\nB = %s (%d rounds)\n"
      "Means over rounds; [min..max] is the spread across rounds. The last "
      "column says which side the mean favours (not a significance test).\n\n",
      a_label, rounds_a, b_label, rounds_b);
  absl::StrAppend(
      &out, absl::StrFormat("%-26s %12s %12s %8s  %-23s %-23s %s\n", "figure",
                            "A", "B", "B/A", "A range", "B range", "better"));
  for (const ComparisonRow& row : rows) {
    // p50 repeats median (both exist for vLLM compatibility).
    if (absl::StartsWith(row.name, "p50_")) continue;
    std::string better = "=";
    if (!std::isnan(row.ratio) && std::fabs(row.ratio - 1) > 0.01) {
      better = (row.ratio > 1) == row.higher_is_better ? "B" : "A";
    }
    if (std::isnan(row.ratio) && row.b_mean != 0) {  // A is 0, B is not
      better = (row.b_mean > 0) == row.higher_is_better ? "B" : "A";
    }
    absl::StrAppend(
        &out,
        absl::StrFormat(
            "%-26s %12s %12s %8s  %-23s %-23s %s\n", row.name,
            Number(row.a_mean), Number(row.b_mean),
            std::isnan(row.ratio) ? std::string("n/a")
                                  : absl::StrFormat("%.3f", row.ratio),
            absl::StrCat("[", Number(row.a_min), "..", Number(row.a_max), "]"),
            absl::StrCat("[", Number(row.b_min), "..", Number(row.b_max), "]"),
            better));
  }
  return out;
}

nlohmann::ordered_json ComparisonToJson(
    const std::vector<ComparisonRow>& rows) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  for (const ComparisonRow& row : rows) {
    nlohmann::ordered_json entry;
    entry["a"] = row.a_mean;
    entry["b"] = row.b_mean;
    entry["ratio"] = std::isnan(row.ratio) ? nlohmann::ordered_json(nullptr)
                                           : nlohmann::ordered_json(row.ratio);
    entry["a_min"] = row.a_min;
    entry["a_max"] = row.a_max;
    entry["b_min"] = row.b_min;
    entry["b_max"] = row.b_max;
    entry["higher_is_better"] = row.higher_is_better;
    json[row.name] = std::move(entry);
  }
  return json;
}

}  // namespace strata::bench
