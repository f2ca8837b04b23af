#include "server/readiness_watchdog.h"

#include <utility>

#include "absl/time/clock.h"
#include "common/thread_name.h"

namespace strata {

std::unique_ptr<ReadinessWatchdog> ReadinessWatchdog::Start(Options options) {
  std::unique_ptr<ReadinessWatchdog> watchdog(
      new ReadinessWatchdog(std::move(options)));
  watchdog->thread_ = std::thread([raw = watchdog.get()] { raw->Run(); });
  return watchdog;
}

ReadinessWatchdog::ReadinessWatchdog(Options options)
    : options_(std::move(options)) {}

ReadinessWatchdog::~ReadinessWatchdog() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ReadinessWatchdog::Run() {
  SetCurrentThreadName("strata-watchdog");
  int64_t last_steps = options_.loop->num_steps();
  // The last time the engine showed progress: a completed step, or an idle
  // moment (nothing pending means nothing can be late).
  absl::Time progress = absl::Now();
  while (!stop_.load()) {
    absl::SleepFor(options_.poll_interval);
    const absl::Time now = absl::Now();
    const bool pending = options_.scheduler->num_requests() > 0;
    const int64_t steps = options_.loop->num_steps();
    if (!pending || steps != last_steps) {
      progress = now;
      last_steps = steps;
    }
    const bool ready = now - progress <= options_.stall_timeout;
    if (ready != ready_.exchange(ready) && options_.on_change) {
      options_.on_change(ready);
    }
  }
}

}  // namespace strata
