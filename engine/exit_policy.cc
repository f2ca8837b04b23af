#include "engine/exit_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata {

std::string_view ExitConfidenceName(ExitConfidence kind) {
  switch (kind) {
    case ExitConfidence::kMaxProb:
      return "max_prob";
    case ExitConfidence::kMargin:
      return "margin";
    case ExitConfidence::kSaturation:
      return "saturation";
    case ExitConfidence::kClassifier:
      return "classifier";
  }
  return "unknown";
}

absl::StatusOr<ExitConfidence> ParseExitConfidence(std::string_view name) {
  for (int k = 0; k < kNumExitConfidences; ++k) {
    const auto kind = static_cast<ExitConfidence>(k);
    if (name == ExitConfidenceName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown exit confidence '", std::string(name),
      "' (expected max_prob, margin, saturation or classifier)"));
}

bool IsHiddenExitConfidence(ExitConfidence kind) {
  return kind == ExitConfidence::kSaturation ||
         kind == ExitConfidence::kClassifier;
}

bool ExitParams::Evaluates(int32_t loop, int32_t num_loops) const {
  if (loop < 0 || loop >= num_loops - 1) return false;
  if (forced_exit_loop >= 0) return loop == forced_exit_loop;
  return threshold < 1.0f && loop >= min_loops - 1;
}

bool ExitParams::Exits(int32_t loop, float confidence_value) const {
  if (forced_exit_loop >= 0) return loop == forced_exit_loop;
  return confidence_value >= threshold;
}

std::string ExitParams::DebugString() const {
  return absl::StrFormat(
      "ExitParams{threshold=%g confidence=%s min_loops=%d "
      "forced_exit_loop=%d}",
      threshold, std::string(ExitConfidenceName(confidence)), min_loops,
      forced_exit_loop);
}

absl::Status ValidateExitParams(const ExitParams& params, int32_t num_loops) {
  if (!std::isfinite(params.threshold)) {
    return absl::InvalidArgumentError(
        absl::StrCat("exit threshold must be finite, got ", params.threshold));
  }
  if (params.min_loops < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("exit min_loops must be >= 1, got ", params.min_loops));
  }
  if (params.forced_exit_loop < -1 ||
      params.forced_exit_loop >= num_loops - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forced_exit_loop ", params.forced_exit_loop,
        " is not -1 or an early exit loop in [0, ", num_loops - 1, ")"));
  }
  return absl::OkStatus();
}

float ComputeExitConfidence(std::span<const float> logits, ExitConfidence kind,
                            const SoftmaxStats& stats) {
  if (logits.empty()) return 0.0f;
  const double sum = stats.sum_exp;
  const double p1 = 1.0 / sum;
  if (kind == ExitConfidence::kMaxProb) return static_cast<float>(p1);
  // The runner-up: the largest logit once the first occurrence of the
  // maximum is set aside (a tie gives p2 = p1, margin 0).
  const size_t first_max = static_cast<size_t>(
      std::find(logits.begin(), logits.end(), stats.max) - logits.begin());
  float top2 = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (i != first_max) top2 = std::max(top2, logits[i]);
  }
  const double p2 = logits.size() > 1
                        ? std::exp(static_cast<double>(top2) - stats.max) / sum
                        : 0.0;
  return static_cast<float>(p1 - p2);
}

float ComputeHiddenExitConfidence(ExitConfidence kind, std::span<const float> h,
                                  const float* prev,
                                  const float* classifier_row, float eps) {
  const size_t n = h.size();
  if (kind == ExitConfidence::kSaturation) {
    float dot = 0.0f, hh = 0.0f, pp = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      dot += h[i] * prev[i];
      hh += h[i] * h[i];
      pp += prev[i] * prev[i];
    }
    const float den = std::sqrt(hh) * std::sqrt(pp);
    return den > 0.0f ? dot / den : 0.0f;
  }
  if (kind == ExitConfidence::kClassifier) {
    float dot = 0.0f, hh = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      dot += h[i] * classifier_row[i];
      hh += h[i] * h[i];
    }
    const float z = dot / std::sqrt(hh / static_cast<float>(n) + eps) +
                    classifier_row[n];
    return 1.0f / (1.0f + std::exp(-z));
  }
  return 0.0f;  // not a hidden-state measure
}

void ComputeHiddenExitConfidences(const float* state, int64_t hidden,
                                  std::span<const int32_t> rows,
                                  const float* prev, const float* classifier,
                                  std::span<const int32_t> loops,
                                  std::span<const ExitConfidence> kinds,
                                  float eps, std::span<float> out) {
  for (size_t j = 0; j < rows.size(); ++j) {
    const bool sat = kinds[j] == ExitConfidence::kSaturation;
    out[j] = ComputeHiddenExitConfidence(
        kinds[j],
        std::span<const float>(state + rows[j] * hidden,
                               static_cast<size_t>(hidden)),
        sat ? prev + static_cast<int64_t>(j) * hidden : nullptr,
        sat ? nullptr : classifier + loops[j] * (hidden + 1), eps);
  }
}

absl::StatusOr<KvFillPolicy> ParseKvFillPolicy(std::string_view name) {
  if (name == "propagate") return KvFillPolicy::kPropagate;
  if (name == "recompute") return KvFillPolicy::kRecompute;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown kv_fill policy '", std::string(name),
                   "' (expected 'propagate' or 'recompute')"));
}

std::string_view KvFillPolicyName(KvFillPolicy policy) {
  switch (policy) {
    case KvFillPolicy::kPropagate:
      return "propagate";
    case KvFillPolicy::kRecompute:
      return "recompute";
  }
  return "unknown";
}

}  // namespace strata
