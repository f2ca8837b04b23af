// The engine thread: the only thread that calls Scheduler::Schedule/Commit
// and StepExecutor::Execute. gRPC threads never touch the engine; they talk to
// the scheduler through its thread-safe Submit/Cancel.
#ifndef STRATA_SCHEDULER_ENGINE_LOOP_H_
#define STRATA_SCHEDULER_ENGINE_LOOP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "engine/step.h"
#include "scheduler/scheduler.h"

namespace strata {

class EngineLoop {
 public:
  struct Options {
    Scheduler* scheduler = nullptr;    // borrowed; outlives the loop
    StepExecutor* executor = nullptr;  // borrowed; outlives the loop
  };

  // Starts the engine thread.
  static std::unique_ptr<EngineLoop> Start(const Options& options);

  // Stop() and join.
  ~EngineLoop();

  // Asks the thread to stop after the current step and waits for it.
  // Requests still queued stay in the scheduler (its destructor ends them).
  void Stop();

  // Completed engine steps (any thread).
  int64_t num_steps() const { return num_steps_.load(); }
  // When the last step completed, in absl::ToUnixNanos (any thread); 0 before
  // the first step.
  int64_t last_step_unix_nanos() const { return last_step_nanos_.load(); }

 private:
  explicit EngineLoop(const Options& options);
  void Run();

  const Options options_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> num_steps_{0};
  std::atomic<int64_t> last_step_nanos_{0};
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SCHEDULER_ENGINE_LOOP_H_
