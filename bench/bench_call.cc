#include "bench/bench_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata::bench {

void BenchCall::End(RequestRecord record, BenchClock::time_point now) {
  // `keep` outlives this object: once `mu` is released below the dispatcher
  // may destroy this call (and drop every other reference to the state).
  const std::shared_ptr<RunState> keep = state_;
  RunState* const state = keep.get();
  absl::MutexLock lock(&state->mu);
  if (record.success) {
    state->consecutive_errors = 0;
  } else if (!record.cancelled_by_bench) {
    ++state->num_failed;
    ++state->consecutive_errors;
    const int32_t limit = state->abort_after_consecutive_errors;
    if (limit > 0 && state->consecutive_errors >= limit &&
        state->stop_reason.empty()) {
      state->stop_reason = absl::StrCat(
          limit, " requests failed in a row (last: ", record.error_code, ": ",
          record.error_message, ")");
    }
  }
  state->records.push_back(std::move(record));
  --state->in_flight;
  // The latest end, not the last to take the lock: calls end on several
  // threads, and one that read its clock earlier may lock later.
  state->last_end = std::max(state->last_end, now);
  auto it = state->live.find(this);
  STRATA_CHECK(it != state->live.end());
  state->finished.push_back(std::move(it->second));
  state->live.erase(it);
  state->changed.SignalAll();
  // From here on the dispatcher may destroy this object.
}

}  // namespace strata::bench
