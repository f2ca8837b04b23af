#include "server/output_worker.h"

#include <functional>
#include <utility>

#include "common/thread_name.h"

namespace strata {

OutputWorker::OutputWorker() : thread_([this] { Run(); }) {}

OutputWorker::~OutputWorker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  ready_.Signal();
  thread_.join();
}

void OutputWorker::Post(std::function<void()> task) {
  bool asleep;
  {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
    asleep = sleeping_;
  }
  if (asleep) ready_.Signal();
}

void OutputWorker::PostDeferred(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
  // A thread that is running takes the task without a wake-up.
  if (sleeping_) wake_owed_.store(true, std::memory_order_relaxed);
}

bool OutputWorker::WakeOwed() const {
  return wake_owed_.load(std::memory_order_relaxed);
}

void OutputWorker::Wake() {
  wake_owed_.store(false, std::memory_order_relaxed);
  // The task was queued under mu_ before the thread could sleep again, so
  // a signal now cannot be lost: the thread either sees the task before it
  // waits or is waiting (CondVar::Signal without a waiter is a no-op).
  ready_.Signal();
}

bool OutputWorker::WaitIdle(absl::Duration timeout) {
  Wake();
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return tasks_.empty() && !busy_;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

int64_t OutputWorker::num_done() const {
  absl::MutexLock lock(&mu_);
  return num_done_;
}

void OutputWorker::Run() {
  SetCurrentThreadName("strata-output");
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      while (tasks_.empty() && !stopping_) {
        sleeping_ = true;
        ready_.Wait(&mu_);
        sleeping_ = false;
      }
      if (tasks_.empty()) return;  // stopping, and everything ran
      task = std::move(tasks_.front());
      tasks_.pop_front();
      busy_ = true;
    }
    task();
    absl::MutexLock lock(&mu_);
    ++num_done_;
    busy_ = false;
  }
}

}  // namespace strata
