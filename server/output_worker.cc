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
  thread_.join();
}

void OutputWorker::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

bool OutputWorker::WaitIdle(absl::Duration timeout) {
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
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !tasks_.empty() || stopping_;
  };
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&ready));
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
