#include "scheduler/engine_loop.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/thread_name.h"

namespace strata {

std::unique_ptr<EngineLoop> EngineLoop::Start(const Options& options) {
  STRATA_CHECK(options.scheduler != nullptr && options.executor != nullptr);
  std::unique_ptr<EngineLoop> loop(new EngineLoop(options));
  loop->thread_ = std::thread([raw = loop.get()] { raw->Run(); });
  return loop;
}

EngineLoop::EngineLoop(const Options& options) : options_(options) {}

EngineLoop::~EngineLoop() { Stop(); }

void EngineLoop::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::FillState(StepStats& stats) const {
  const Scheduler& scheduler = *options_.scheduler;
  stats.num_running = scheduler.num_running();
  stats.num_waiting = scheduler.num_waiting();
  stats.num_blocks_used = scheduler.num_blocks_used();
  stats.num_blocks_total = scheduler.options().num_blocks;
}

void EngineLoop::ReportStateChange() {
  if (options_.observer == nullptr) return;
  StepStats stats;
  FillState(stats);
  if (stats.num_running == last_reported_.num_running &&
      stats.num_waiting == last_reported_.num_waiting &&
      stats.num_blocks_used == last_reported_.num_blocks_used) {
    return;
  }
  last_reported_ = stats;
  options_.observer->OnStateChange(stats);
}

void EngineLoop::Run() {
  SetCurrentThreadName(kEngineThreadName);
  Scheduler& scheduler = *options_.scheduler;
  StepExecutor& executor = *options_.executor;
  // Test-only fault hook: while the file named by STRATA_TEST_STALL_FILE
  // exists, the loop stalls before each step (the readiness tests use it).
  // While stalled it keeps the file FILE.parked, so that a test can know
  // that the engine is between two steps rather than inside a slow one.
  const char* stall_env = std::getenv("STRATA_TEST_STALL_FILE");
  const std::string stall_file = stall_env == nullptr ? "" : stall_env;
  const std::string parked_file = stall_file + ".parked";
  while (!stop_.load()) {
    // The short timeout bounds how late a stop request or a passed deadline
    // of a queued request is noticed when the server is otherwise idle.
    if (!scheduler.WaitForWork(absl::Milliseconds(50))) continue;
    if (!stall_file.empty() && access(stall_file.c_str(), F_OK) == 0) {
      std::ofstream(parked_file) << "parked\n";
      while (!stop_.load() && access(stall_file.c_str(), F_OK) == 0) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      std::remove(parked_file.c_str());
    }
    StepPlan plan = scheduler.Schedule();
    // Sequences that ended or were preempted since the last step: their
    // kept hidden states (recursive models) go before the next Execute.
    for (const RequestId id : scheduler.TakeReleasedStates()) {
      executor.ReleaseState(id);
    }
    if (plan.items.empty()) {
      scheduler.Commit(StepResult{});
      WakeDelivery();
      ReportStateChange();
      continue;
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<StepResult> result = executor.Execute(plan);
    const absl::Time end = absl::Now();
    if (!result.ok()) {
      STRATA_LOG(ERROR) << "engine step failed (" << plan.items.size()
                        << " requests end with an error): " << result.status();
    }
    scheduler.Commit(result);
    WakeDelivery();
    num_steps_.fetch_add(1);
    last_step_nanos_.store(absl::ToUnixNanos(end));
    if (options_.observer != nullptr) {
      StepStats stats;
      // Sequences, not items: a sequence's fills and the tokens of a prompt
      // going token by token are items of their own, next to each other.
      stats.num_items = 0;
      for (size_t i = 0; i < plan.items.size(); ++i) {
        stats.num_items +=
            i == 0 || plan.items[i].request_id != plan.items[i - 1].request_id;
      }
      stats.num_tokens = plan.NumTokens();
      stats.duration = end - start;
      stats.failed = !result.ok();
      FillState(stats);
      last_reported_ = stats;
      stats.num_preemptions = scheduler.num_preemptions();
      stats.prefix_queried_tokens = scheduler.prefix_queried_tokens();
      stats.prefix_hit_tokens = scheduler.prefix_hit_tokens();
      stats.early_exit_tokens = scheduler.early_exit_tokens();
      stats.prompt_exit_tokens = scheduler.prompt_exit_tokens();
      options_.observer->OnStep(stats);
    }
  }
  // The last wake-up has run before the loop's owner may destroy what it
  // wakes.
  executor.WaitBeside();
}

void EngineLoop::WakeDelivery() {
  StepDelivery* delivery = options_.delivery;
  if (delivery == nullptr || !delivery->WakeOwed()) return;
  options_.executor->StartBeside([delivery] { delivery->Wake(); });
}

}  // namespace strata
