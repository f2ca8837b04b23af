// A recursive model's early-exit extras from its folder
// (docs/recursive-models.md, "Exit classifier" and "Calibrated defaults"):
// the optional learned exit classifier (config.json "exit_classifier" naming
// a safetensors file) and the calibrated per-measure thresholds
// ("exit_thresholds") a request without exit_threshold uses.
//
// Both are optional: a model without them serves max_prob at full depth by
// default, as before.
#ifndef STRATA_ENGINE_EXIT_DEFAULTS_H_
#define STRATA_ENGINE_EXIT_DEFAULTS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/exit_policy.h"
#include "engine/loader/model_config.h"

namespace strata {

struct ExitDefaults {
  // The classifier of every early exit loop l < num_loops - 1, row l =
  // [w_l (hidden), b_l]: [num_loops - 1, hidden + 1] row-major; empty when
  // the model has none. confidence = sigmoid(w_l . h / rms(h) + b_l).
  std::vector<float> classifier;
  // Calibrated threshold per measure (index: ExitConfidence), unset when
  // the model's config has none for it.
  std::array<std::optional<float>, kNumExitConfidences> thresholds;

  bool has_classifier() const { return !classifier.empty(); }
  // The measure of a request that names none: the classifier when the
  // model has one, else max_prob.
  ExitConfidence DefaultConfidence() const;
  // The threshold of a request that sets none, for its measure: the
  // calibrated one, else 1 (full depth).
  float DefaultThreshold(ExitConfidence kind) const;
};

// Reads config.json's "exit_classifier" ({"file": NAME, ...}; the file
// holds exit_classifier.weight [num_loops - 1, hidden] and
// exit_classifier.bias [num_loops - 1], any float dtype) and
// "exit_thresholds" ({measure name: threshold in [0, 1]}) from model_dir.
// Absent keys give empty defaults; a malformed key, a missing file or a
// mis-shaped tensor is INVALID_ARGUMENT naming it.
absl::StatusOr<ExitDefaults> LoadExitDefaults(const std::string& model_dir,
                                              const ModelConfig& config);

}  // namespace strata

#endif  // STRATA_ENGINE_EXIT_DEFAULTS_H_
