#include "engine/step.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata {

std::string SamplingParams::DebugString() const {
  return absl::StrCat("temperature=", temperature, " top_k=", top_k,
                      " top_p=", top_p, " min_p=", min_p,
                      " repetition_penalty=", repetition_penalty,
                      " presence_penalty=", presence_penalty,
                      " frequency_penalty=", frequency_penalty, " seed=", seed,
                      " num_top_logprobs=", num_top_logprobs);
}

std::string WorkItem::DebugString() const {
  return absl::StrCat(
      "{request=", request_id, " tokens=", tokens.size(),
      " start=", start_position, " blocks=[", absl::StrJoin(block_table, ","),
      "] sample=", sample,
      (loop_begin != 0 || loop_end != -1)
          ? absl::StrCat(" loops=[", loop_begin, ",", loop_end, ")")
          : std::string(),
      exit != nullptr ? absl::StrCat(" ", exit->DebugString()) : std::string(),
      kv_fill ? " kv_fill" : "", "}");
}

int32_t StepPlan::NumTokens() const {
  int32_t n = 0;
  for (const WorkItem& item : items)
    n += static_cast<int32_t>(item.tokens.size());
  return n;
}

std::string StepPlan::DebugString() const {
  std::vector<std::string> parts;
  parts.reserve(items.size());
  for (const WorkItem& item : items) parts.push_back(item.DebugString());
  for (const BlockCopy& copy : block_copies) {
    parts.push_back(absl::StrCat("{copy ", copy.src, "->", copy.dst, "}"));
  }
  return absl::StrCat("StepPlan{", absl::StrJoin(parts, " "), "}");
}

}  // namespace strata
