#include "scheduler/engine_loop.h"

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// Echoes the last input token + 1; enough to check the loop's plumbing.
class CountingExecutor : public StepExecutor {
 public:
  explicit CountingExecutor(absl::Duration step_time = absl::ZeroDuration())
      : step_time_(step_time) {}
  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override {
    absl::SleepFor(step_time_);
    StepResult result;
    for (const WorkItem& item : plan.items) {
      ItemResult r;
      r.request_id = item.request_id;
      if (item.sample) r.sampled = SampledToken{item.tokens.back() + 1, 0, {}};
      result.items.push_back(r);
    }
    return result;
  }
  int32_t block_size() const override { return 4; }
  int32_t num_blocks() const override { return 256; }

 private:
  absl::Duration step_time_;
};

class NotifyingSink : public RequestSink {
 public:
  bool OnToken(const TokenEvent& event) override {
    tokens.push_back(event.sampled.token);
    return true;
  }
  void OnFinish(const FinishInfo& info) override {
    finish = info;
    done.Notify();
  }
  std::vector<TokenId> tokens;
  FinishInfo finish;
  absl::Notification done;
};

class RecordingObserver : public StepObserver {
 public:
  void OnStep(const StepStats& stats) override {
    steps.fetch_add(1);
    tokens.fetch_add(stats.num_tokens);
  }
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> tokens{0};
};

// The executors' block size and pool.
std::unique_ptr<Scheduler> MakeScheduler(int32_t max_model_len) {
  Scheduler::Options options;
  options.block_size = 4;
  options.num_blocks = 256;
  options.max_model_len = max_model_len;
  return *Scheduler::Create(options);
}

TEST(EngineLoopTest, ServesRequestsSubmittedFromManyThreads) {
  auto scheduler = MakeScheduler(/*max_model_len=*/64);
  CountingExecutor executor;
  RecordingObserver observer;
  auto loop = EngineLoop::Start({scheduler.get(), &executor, &observer});

  constexpr int kThreads = 8;
  std::vector<std::shared_ptr<NotifyingSink>> sinks(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    sinks[t] = std::make_shared<NotifyingSink>();
    threads.emplace_back([&, t] {
      RequestSpec spec;
      spec.prompt = {10 * t, 10 * t + 1};
      spec.max_tokens = 5;
      spec.sink = sinks[t];
      EXPECT_TRUE(scheduler->Submit(spec).ok());
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(
        sinks[t]->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_EQ(sinks[t]->finish.reason, FinishReason::kLength);
    const std::vector<TokenId> expected = {10 * t + 2, 10 * t + 3, 10 * t + 4,
                                           10 * t + 5, 10 * t + 6};
    EXPECT_EQ(sinks[t]->tokens, expected);
  }
  loop->Stop();
  EXPECT_GE(loop->num_steps(), 5);
  EXPECT_EQ(observer.steps.load(), loop->num_steps());
  EXPECT_EQ(observer.tokens.load(), kThreads * (2 + 4));
  EXPECT_GT(loop->last_step_unix_nanos(), 0);
}

TEST(EngineLoopTest, CancelReachesARunningRequest) {
  auto scheduler = MakeScheduler(/*max_model_len=*/1000);
  // 900 steps of 1 ms: the cancel, sent at once, arrives long before the end.
  CountingExecutor executor(absl::Milliseconds(1));
  auto loop = EngineLoop::Start({scheduler.get(), &executor, nullptr});
  auto sink = std::make_shared<NotifyingSink>();
  RequestSpec spec;
  spec.prompt = {1};
  spec.max_tokens = 900;
  spec.sink = sink;
  const RequestId id = *scheduler->Submit(spec);
  scheduler->Cancel(id);
  ASSERT_TRUE(sink->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(sink->finish.reason, FinishReason::kCancelled);
  EXPECT_LT(sink->tokens.size(), 900u);
}

// Holds the engine inside its second step until released, so a test can act
// while a request is known to be running.
class GatedExecutor : public CountingExecutor {
 public:
  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override {
    if (++calls_ == 2) {
      in_second_step.Notify();
      release.WaitForNotification();
    }
    return CountingExecutor::Execute(plan);
  }
  absl::Notification in_second_step;
  absl::Notification release;

 private:
  int calls_ = 0;  // engine thread only
};

// Keeps the last state the loop reported.
class StateObserver : public StepObserver {
 public:
  void OnStep(const StepStats& stats) override { Record(stats); }
  void OnStateChange(const StepStats& stats) override { Record(stats); }
  // Waits (bounded) until the reported state is idle.
  bool WaitForIdle(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return reported_ && running_ == 0 && waiting_ == 0 && blocks_ == 0;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
  }
  int32_t running() {
    absl::MutexLock lock(&mu_);
    return running_;
  }

 private:
  void Record(const StepStats& stats) {
    absl::MutexLock lock(&mu_);
    reported_ = true;
    running_ = stats.num_running;
    waiting_ = stats.num_waiting;
    blocks_ = stats.num_blocks_used;
  }
  absl::Mutex mu_;
  bool reported_ ABSL_GUARDED_BY(mu_) = false;
  int32_t running_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t blocks_ ABSL_GUARDED_BY(mu_) = 0;
};

// The gauges an autoscaler reads must drop when a request is cancelled,
// not only at the next step that has work (there is none here).
TEST(EngineLoopTest, ReportsTheStateAfterACancelWithoutAnotherStep) {
  auto scheduler = MakeScheduler(/*max_model_len=*/1000);
  GatedExecutor executor;
  StateObserver observer;
  auto loop = EngineLoop::Start({scheduler.get(), &executor, &observer});
  auto sink = std::make_shared<NotifyingSink>();
  RequestSpec spec;
  spec.prompt = {1, 2, 3, 4, 5};
  spec.max_tokens = 900;
  spec.sink = sink;
  const RequestId id = *scheduler->Submit(spec);
  ASSERT_TRUE(executor.in_second_step.WaitForNotificationWithTimeout(
      absl::Seconds(30)));
  EXPECT_EQ(observer.running(), 1);  // reported after the first step
  scheduler->Cancel(id);
  executor.release.Notify();
  ASSERT_TRUE(sink->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(sink->finish.reason, FinishReason::kCancelled);
  // The step after the cancel has no work: only a state report can say so.
  EXPECT_TRUE(observer.WaitForIdle(absl::Seconds(10)))
      << "running " << observer.running();
}

// Runs StartBeside's task at once and says whether a task is running inside
// it; counts the calls (engine thread only).
class BesideExecutor : public CountingExecutor {
 public:
  void StartBeside(absl::AnyInvocable<void()> task) override {
    ++started;
    in_beside = true;
    task();
    in_beside = false;
  }
  void WaitBeside() override { ++waits; }
  int started = 0;
  int waits = 0;
  bool in_beside = false;
};

// Owes a wake-up after each token its sink posts, as the OutputWorker does
// when a PostDeferred finds it asleep.
class OwedDelivery : public StepDelivery {
 public:
  explicit OwedDelivery(const BesideExecutor* executor) : executor_(executor) {}
  bool WakeOwed() const override { return owed; }
  void Wake() override {
    owed = false;
    ++wakes;
    all_beside = all_beside && executor_->in_beside;
  }
  bool owed = false;
  int wakes = 0;
  bool all_beside = true;

 private:
  const BesideExecutor* executor_;
};

class OwingSink : public NotifyingSink {
 public:
  explicit OwingSink(OwedDelivery* delivery) : delivery_(delivery) {}
  bool OnToken(const TokenEvent& event) override {
    delivery_->owed = true;
    return NotifyingSink::OnToken(event);
  }

 private:
  OwedDelivery* delivery_;
};

// A Commit that leaves the delivery a wake-up hands it to the executor
// (StartBeside), once per such step and never for a step that owes none;
// the loop waits for the last one before it ends.
TEST(EngineLoopTest, HandsTheDeliverysWakeUpToTheExecutor) {
  auto scheduler = MakeScheduler(/*max_model_len=*/64);
  BesideExecutor executor;
  OwedDelivery delivery(&executor);
  auto loop = EngineLoop::Start({.scheduler = scheduler.get(),
                                 .executor = &executor,
                                 .delivery = &delivery});
  auto sink = std::make_shared<OwingSink>(&delivery);
  RequestSpec spec;
  spec.prompt = {1, 2, 3};
  spec.max_tokens = 5;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  ASSERT_TRUE(sink->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  loop->Stop();
  EXPECT_EQ(sink->tokens.size(), 5u);
  // One step per token (the prompt's step samples the first); the idle
  // passes before and after owe nothing.
  EXPECT_EQ(loop->num_steps(), 5);
  EXPECT_EQ(delivery.wakes, 5);
  EXPECT_EQ(executor.started, 5);
  EXPECT_TRUE(delivery.all_beside);
  EXPECT_FALSE(delivery.owed);
  EXPECT_EQ(executor.waits, 1);
}

}  // namespace
}  // namespace strata
