// ExitChecks: which rows of one round of a recursive step the exit rule
// looks at after the round, split by how their confidence is computed
// (LlamaModel::RunStepOnce; docs/engine.md, "Recursive forward").
#ifndef STRATA_ENGINE_EXIT_CHECKS_H_
#define STRATA_ENGINE_EXIT_CHECKS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/exit_policy.h"
#include "engine/loop_planner.h"
#include "engine/step.h"

namespace strata {

// The exit checks after one round: the items with ExitParams whose rule
// evaluates at the loop they run. Planned before the round (the slots and
// loops hold through it). A model keeps one across its steps, so the
// vectors keep their memory.
struct ExitChecks {
  // Hidden-state measures, saturation items first so that row j of the
  // previous-states buffer is hidden item j's.
  std::vector<int32_t> hidden_items, hidden_rows, hidden_loops;
  std::vector<ExitConfidence> hidden_kinds;
  std::vector<int32_t> saturation_slots;  // their slots, to copy pre-round
  // Softmax measures (exit logits).
  std::vector<int32_t> logit_items, logit_rows;
  std::vector<ExitConfidence> logit_kinds;
  std::vector<float> confidences;
  std::vector<int32_t> head_rows;  // exiting rows of hidden measures

  bool empty() const { return hidden_items.empty() && logit_items.empty(); }

  void Plan(std::span<const WorkItem> items, const LoopPlanner::Round& round,
            const LoopPlanner& planner, int32_t num_loops);
};

}  // namespace strata

#endif  // STRATA_ENGINE_EXIT_CHECKS_H_
