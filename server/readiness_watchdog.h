// Readiness that proves forward progress: when requests are pending and the
// engine loop has not completed a step within `stall_timeout`, the server is
// not ready (health for strata.v1.Generation turns NOT_SERVING and
// strata_engine_stalled reads 1); it is ready again as soon as a step
// completes. Liveness (health service "") is not touched: a stalled engine is
// a reason to route around a replica, not necessarily to restart it.
//
// Threading: its own thread polls the scheduler's and the loop's counters
// (both thread-safe) and calls `on_change` from that thread.
#ifndef STRATA_SERVER_READINESS_WATCHDOG_H_
#define STRATA_SERVER_READINESS_WATCHDOG_H_

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "absl/time/time.h"
#include "scheduler/engine_loop.h"
#include "scheduler/scheduler.h"

namespace strata {

class ReadinessWatchdog {
 public:
  struct Options {
    const Scheduler* scheduler = nullptr;  // borrowed; outlives the watchdog
    const EngineLoop* loop = nullptr;      // borrowed; outlives the watchdog
    absl::Duration stall_timeout = absl::Seconds(30);
    absl::Duration poll_interval = absl::Milliseconds(100);
    // Called with the new state whenever readiness changes.
    std::function<void(bool ready)> on_change;
  };

  static std::unique_ptr<ReadinessWatchdog> Start(Options options);
  ~ReadinessWatchdog();  // stops and joins

  bool ready() const { return ready_.load(); }

 private:
  explicit ReadinessWatchdog(Options options);
  void Run();

  const Options options_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> ready_{true};
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_READINESS_WATCHDOG_H_
