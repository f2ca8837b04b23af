// The engine thread: the only thread that calls Scheduler::Schedule/Commit
// and StepExecutor::Execute. gRPC threads never touch the engine; they talk to
// the scheduler through its thread-safe Submit/Cancel.
#ifndef STRATA_SCHEDULER_ENGINE_LOOP_H_
#define STRATA_SCHEDULER_ENGINE_LOOP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/time/time.h"
#include "engine/step.h"
#include "scheduler/scheduler.h"

namespace strata {

// What one engine step did, for metrics.
struct StepStats {
  int32_t num_items = 0;    // sequences in the step (batch size)
  int32_t num_tokens = 0;   // tokens computed in the step
  absl::Duration duration;  // Execute() only
  bool failed = false;
  // Scheduler state after the step.
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int32_t num_blocks_used = 0;
  int32_t num_blocks_total = 0;
  // Running totals since start.
  int64_t num_preemptions = 0;
  int64_t prefix_queried_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  // Recursive models: tokens that exited early (their skipped loops' K/V
  // filled by propagation or recompute).
  int64_t early_exit_tokens = 0;
  // Prompt tokens that exited early (Scheduler::Options::prompt_exits).
  int64_t prompt_exit_tokens = 0;
};

// Called on the engine thread; must be quick.
class StepObserver {
 public:
  virtual ~StepObserver() = default;
  // After every step with work.
  virtual void OnStep(const StepStats& stats) = 0;
  // After a pass of the loop that ran no step but changed the scheduler's
  // state (a cancel, a passed deadline, a client gone): only the state
  // fields (num_running, num_waiting, num_blocks_*) are set. Gauges that
  // follow the state must not wait for the next step with work.
  virtual void OnStateChange(const StepStats& stats) {}
};

// The thread that delivers what the requests' sinks post during Commit (the
// server's OutputWorker), when those posts leave its wake-up to the loop.
// Waking a sleeping thread costs the waker a system call and an
// inter-processor interrupt: about 6.5 us on the 2-core VM the benchmarks
// run on, 4% of a token at one sequence. The loop hands it to
// StepExecutor::StartBeside, so that a thread the next step leaves idle
// pays it instead of the engine thread.
class StepDelivery {
 public:
  virtual ~StepDelivery() = default;
  // Whether posts wait for Wake() (engine thread, after Commit).
  virtual bool WakeOwed() const = 0;
  // Wakes the delivering thread if it sleeps (any thread).
  virtual void Wake() = 0;
};

class EngineLoop {
 public:
  struct Options {
    Scheduler* scheduler = nullptr;    // borrowed; outlives the loop
    StepExecutor* executor = nullptr;  // borrowed; outlives the loop
    StepObserver* observer = nullptr;  // optional, borrowed
    // Optional, borrowed; outlives the loop. Woken beside the next step
    // after every Commit that owes it a wake-up.
    StepDelivery* delivery = nullptr;
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
  // After a Commit: hands the delivery's owed wake-up to the executor.
  void WakeDelivery();
  // The scheduler's state fields of `stats` (running, waiting, blocks).
  void FillState(StepStats& stats) const;
  // Tells the observer the state after a pass without a step, if it changed
  // since the last report.
  void ReportStateChange();

  const Options options_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> num_steps_{0};
  std::atomic<int64_t> last_step_nanos_{0};
  std::thread thread_;
  // Engine thread: the state last reported to the observer.
  StepStats last_reported_;
};

}  // namespace strata

#endif  // STRATA_SCHEDULER_ENGINE_LOOP_H_
