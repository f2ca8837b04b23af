#include "text/stop_string_matcher.h"

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& stop : stop_strings) {
    if (!stop.empty()) stop_strings_.push_back(std::move(stop));
  }
}

StopStringMatcher::Result StopStringMatcher::Add(std::string_view delta) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    result.matched = matched_;
    return result;
  }
  held_.append(delta);
  // held_ = (held-back suffix) + delta. A stop string cannot start in text
  // already emitted: its start would have been part of the held-back suffix.
  size_t best_begin = std::string::npos;
  size_t best_end = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& stop : stop_strings_) {
    const size_t begin = held_.find(stop);
    if (begin == std::string::npos) continue;
    const size_t end = begin + stop.size();
    if (best == nullptr || end < best_end ||
        (end == best_end && begin < best_begin)) {
      best = &stop;
      best_begin = begin;
      best_end = end;
    }
  }
  if (best != nullptr) {
    stopped_ = true;
    matched_ = *best;
    result.stopped = true;
    result.matched = matched_;
    result.text = held_.substr(0, best_begin);
    held_.clear();
    return result;
  }
  const size_t keep = HeldBackLength();
  result.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return result;
}

std::string StopStringMatcher::Flush() {
  std::string text = std::move(held_);
  held_.clear();
  return text;
}

size_t StopStringMatcher::HeldBackLength() const {
  const std::string_view held = held_;
  size_t longest = 0;
  for (const std::string& stop : stop_strings_) {
    // Proper prefixes only: a whole stop string would have been matched.
    const size_t max_len = std::min(held.size(), stop.size() - 1);
    for (size_t len = max_len; len > longest; --len) {
      if (held.substr(held.size() - len) ==
          std::string_view(stop).substr(0, len)) {
        longest = len;
        break;
      }
    }
  }
  return longest;
}

}  // namespace strata
