#include "engine/exit_checks.h"

#include <cstdint>
#include <span>

namespace strata {

void ExitChecks::Plan(std::span<const WorkItem> items,
                      const LoopPlanner::Round& round,
                      const LoopPlanner& planner, int32_t num_loops) {
  hidden_items.clear();
  hidden_rows.clear();
  hidden_loops.clear();
  hidden_kinds.clear();
  saturation_slots.clear();
  logit_items.clear();
  logit_rows.clear();
  logit_kinds.clear();
  for (const bool saturation_pass : {true, false}) {
    for (size_t a = 0; a < round.items.size(); ++a) {
      const int32_t i = round.items[a];
      const WorkItem& item = items[i];
      if (item.exit == nullptr ||
          !item.exit->Evaluates(round.loops[a], num_loops)) {
        continue;
      }
      const ExitConfidence kind = item.exit->confidence;
      const int32_t slot = planner.item(i).slot;  // its single row
      if (!IsHiddenExitConfidence(kind)) {
        if (saturation_pass) {
          logit_items.push_back(i);
          logit_rows.push_back(slot);
          logit_kinds.push_back(kind);
        }
        continue;
      }
      if ((kind == ExitConfidence::kSaturation) != saturation_pass) continue;
      hidden_items.push_back(i);
      hidden_rows.push_back(slot);
      hidden_loops.push_back(round.loops[a]);
      hidden_kinds.push_back(kind);
      if (saturation_pass) saturation_slots.push_back(slot);
    }
  }
}

}  // namespace strata
