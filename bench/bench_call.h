// One request of a load run, whatever the protocol, and the state a run's
// dispatcher shares with its requests in flight.
//
// A LoadRunner run owns its calls (not self-deleting), so that the dispatcher
// can cancel any of them without racing their destruction. A call reports its
// end exactly once, through BenchCall::End, from whatever thread its
// transport completes on; after End returns the dispatcher may destroy it.
#ifndef STRATA_BENCH_BENCH_CALL_H_
#define STRATA_BENCH_BENCH_CALL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "bench/metrics.h"

namespace strata::bench {

using BenchClock = std::chrono::steady_clock;

inline double SecondsBetween(BenchClock::time_point from,
                             BenchClock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

class BenchCall;

// What the dispatcher and the calls share. Each call holds a reference, so
// that the last End can still unlock `mu` after the dispatcher has returned;
// the cycle is broken when the dispatcher destroys the calls.
struct RunState {
  absl::Mutex mu;
  absl::CondVar changed;  // a request ended
  BenchClock::time_point start;
  std::unordered_map<BenchCall*, std::unique_ptr<BenchCall>> live
      ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<BenchCall>> finished ABSL_GUARDED_BY(mu);
  std::vector<RequestRecord> records ABSL_GUARDED_BY(mu);
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  int64_t max_in_flight ABSL_GUARDED_BY(mu) = 0;
  int64_t num_failed ABSL_GUARDED_BY(mu) = 0;
  int32_t consecutive_errors ABSL_GUARDED_BY(mu) = 0;
  int32_t abort_after_consecutive_errors = 0;
  std::string stop_reason ABSL_GUARDED_BY(mu);  // non-empty: stop sending
  BenchClock::time_point last_end ABSL_GUARDED_BY(mu);
};

class BenchCall {
 public:
  virtual ~BenchCall() = default;
  BenchCall(const BenchCall&) = delete;
  BenchCall& operator=(const BenchCall&) = delete;

  // Sends the request. Called once, without holding the state's mu, after
  // the call is in `live`.
  virtual void Start() = 0;

  // The bench gives up on the request (max run time): it must end soon, as
  // cancelled_by_bench rather than as a failure of the daemon.
  virtual void TryCancel() = 0;

 protected:
  explicit BenchCall(std::shared_ptr<RunState> state)
      : state_(std::move(state)) {}

  // Records the request's end and hands the call to the dispatcher, which
  // may destroy it as soon as this returns. Call exactly once, last.
  void End(RequestRecord record, BenchClock::time_point now);

  const std::shared_ptr<RunState> state_;
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_BENCH_CALL_H_
