// Early exit for recursive models (docs/recursive-models.md, "Early exit"):
// the per-request exit parameters a WorkItem carries, the confidence of an
// exit point, the exit rule, and the KV fill policy of a ModelRunner.
//
// A decode token of a recursive model may stop after loop l < N-1 when the
// confidence of its exit logits (softmax at temperature 1, independent of the
// sampling temperature) reaches the request's threshold. The K/V of the loops
// it skipped are then filled per the runner's KvFillPolicy.
#ifndef STRATA_ENGINE_EXIT_POLICY_H_
#define STRATA_ENGINE_EXIT_POLICY_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/softmax_stats.h"

namespace strata {

// How the exit confidence of loop l is computed: from p = softmax(exit
// logits of loop l), or from the residual stream h_l alone (O(hidden) per
// row, no LM head; docs/recursive-models.md, "Early exit").
enum class ExitConfidence {
  kMaxProb,     // p_top1
  kMargin,      // p_top1 - p_top2
  kSaturation,  // cos(h_l, h_{l-1}); h_{-1} = the token's embedding
  kClassifier,  // sigmoid(w_l . h_l / rms(h_l) + b_l), the model's classifier
};
inline constexpr int kNumExitConfidences = 4;

std::string_view ExitConfidenceName(ExitConfidence kind);
// "max_prob" | "margin" | "saturation" | "classifier"; INVALID_ARGUMENT
// naming the value otherwise.
absl::StatusOr<ExitConfidence> ParseExitConfidence(std::string_view name);
// Whether the measure is computed from the residual stream rather than the
// exit logits.
bool IsHiddenExitConfidence(ExitConfidence kind);

// Per-request early-exit parameters (WorkItem::exit). Plain data; the
// scheduler owns it and keeps it alive for the step.
struct ExitParams {
  // Exit after loop l (l < num_loops - 1) when confidence >= threshold and
  // l >= min_loops - 1. A threshold >= 1 disables early exit (full depth).
  float threshold = 1.0f;
  ExitConfidence confidence = ExitConfidence::kMaxProb;
  int32_t min_loops = 1;  // >= 1
  // Test hook: >= 0 exits exactly after this loop (< num_loops - 1) whatever
  // the confidence, threshold and min_loops; -1 = the threshold rule.
  int32_t forced_exit_loop = -1;

  // Whether the rule can exit early at all (a threshold below 1, or a
  // forced exit): the scheduler attaches the params to a decode item only
  // then, without knowing how the rule decides.
  bool Enabled() const { return threshold < 1.0f || forced_exit_loop >= 0; }
  // Whether the rule may exit after `loop` at all, i.e. whether the exit
  // logits of that loop need computing (num_loops: of the model).
  bool Evaluates(int32_t loop, int32_t num_loops) const;
  // The decision at `loop` given that loop's confidence (only meaningful
  // where Evaluates(loop) is true).
  bool Exits(int32_t loop, float confidence_value) const;

  std::string DebugString() const;
};

// INVALID_ARGUMENT unless threshold is finite, min_loops >= 1 and
// forced_exit_loop is -1 or in [0, num_loops - 1).
absl::Status ValidateExitParams(const ExitParams& params, int32_t num_loops);

// Confidence of one row of exit logits, given the row's softmax statistics
// (Backend::RowSoftmaxStats): max_prob = 1 / sum_j exp(l_j - l_max); margin
// subtracts exp(l_2nd - l_max) / sum. logits: [vocab], vocab >= 1 (margin of
// a one-token vocabulary is p_top1).
float ComputeExitConfidence(std::span<const float> logits, ExitConfidence kind,
                            const SoftmaxStats& stats);

// Confidence of one row from its residual stream (IsHiddenExitConfidence
// kinds; float sums in index order, so every backend that follows it gets
// the same bits on the CPU). h: [hidden], the state after the loop;
// kSaturation: prev [hidden], the state before it (cosine 0 when either is
// zero); kClassifier: classifier_row [hidden + 1] = w_l then b_l, eps the
// model's rms_norm_eps.
float ComputeHiddenExitConfidence(ExitConfidence kind, std::span<const float> h,
                                  const float* prev,
                                  const float* classifier_row, float eps);
// ComputeHiddenExitConfidence for rows of host arrays (the contract of
// Backend::HiddenExitConfidences): row j is state[rows[j]] of kinds[j],
// against prev row j or classifier row loops[j].
// state: [n, hidden]; prev: [rows, hidden] (may be null without saturation
// rows); classifier: [early loops, hidden + 1] (may be null without
// classifier rows); rows, loops, kinds, out: [rows]
void ComputeHiddenExitConfidences(const float* state, int64_t hidden,
                                  std::span<const int32_t> rows,
                                  const float* prev, const float* classifier,
                                  std::span<const int32_t> loops,
                                  std::span<const ExitConfidence> kinds,
                                  float eps, std::span<float> out);

// What happens to the K/V of the loops a token skipped by exiting early.
enum class KvFillPolicy {
  // CALM-style state propagation, in the same step: for every skipped
  // (loop l, layer k), K/V = projections of RMSNorm(h_exit) * input_norm_k
  // with loop l's weights. No state is kept.
  kPropagate,
  // Exact: the exit state is kept in the engine's hidden-state store and the
  // scheduler later sends a kv_fill WorkItem that runs the skipped loops.
  kRecompute,
};

// "propagate" | "recompute"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<KvFillPolicy> ParseKvFillPolicy(std::string_view name);
std::string_view KvFillPolicyName(KvFillPolicy policy);

}  // namespace strata

#endif  // STRATA_ENGINE_EXIT_POLICY_H_
