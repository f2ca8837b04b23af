#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <utility>

#include "common/thread_name.h"

namespace strata::cpu {
namespace {

// Spin iterations before sleeping (a few tens of microseconds).
constexpr int kSpinIterations = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Set on a worker while it runs the side task: its ParallelFor calls run
// inline (the caller's jobs may be running beside it).
thread_local bool t_in_side_task = false;

// Waits for done() by spinning, then yielding: the caller's wait for tasks
// that other threads are running.
template <typename Done>
void SpinUntil(Done done) {
  for (int spin = 0; !done(); ++spin) {
    if (spin < kSpinIterations) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

constexpr uint64_t Pack(uint32_t generation, uint32_t next) {
  return (uint64_t{generation} << 32) | next;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
  }
  num_threads = std::max(num_threads, 1);
  workers_.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  WaitSideTask();
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::RunTasks(uint32_t generation) {
  uint64_t state = state_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(state >> 32) != generation) return;
    const int64_t next = static_cast<uint32_t>(state);
    // Acquire: pairs with ParallelFor's release (see there).
    if (next >= num_tasks_.load(std::memory_order_acquire)) return;
    // On failure `state` is reloaded and the checks run again.
    if (!state_.compare_exchange_weak(state, state + 1,
                                      std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;
    }
    // The claim succeeded, so job `generation` cannot finish before this
    // task does: task_ is still its task.
    (*task_.load(std::memory_order_relaxed))(next);
    completed_.fetch_add(1, std::memory_order_acq_rel);
    state = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::WorkerLoop() {
  SetCurrentThreadName(kKernelThreadName);
  uint32_t seen = 0;
  for (;;) {
    uint32_t current = generation_.load(std::memory_order_acquire);
    for (int spin = 0; current == seen && spin < kSpinIterations; ++spin) {
      CpuRelax();
      current = generation_.load(std::memory_order_acquire);
    }
    while (current == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      current = generation_.load(std::memory_order_acquire);
    }
    seen = current;
    if (stop_.load(std::memory_order_relaxed)) return;
    ClaimSideTask();
    RunTasks(current);
  }
}

void ThreadPool::ParallelFor(int64_t num_tasks,
                             absl::FunctionRef<void(int64_t)> task) {
  if (num_tasks <= 0) return;
  if (workers_.empty() || num_tasks == 1 || t_in_side_task) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i);
    return;
  }
  const uint32_t generation = generation_.load(std::memory_order_relaxed) + 1;
  // The claim state moves to the new job *before* the new task count is
  // stored. A worker that wakes late for the previous job reads the old
  // (fully claimed) state and then the task count; had the count been
  // published first, a larger new count would let its CAS on the old state
  // succeed: it would run a task of this job before publication and count it
  // twice, and this call would wait forever for a completion count it had
  // passed. The release/acquire pair on num_tasks_ makes a worker
  // that reads the new count also see the new state, so its CAS fails.
  state_.store(Pack(generation, 0), std::memory_order_relaxed);
  task_.store(&task, std::memory_order_relaxed);
  completed_.store(0, std::memory_order_relaxed);
  num_tasks_.store(num_tasks, std::memory_order_release);
  generation_.store(generation, std::memory_order_release);
  generation_.notify_all();
  RunTasks(generation);
  // Every task is claimed now; wait for the ones other threads still run.
  SpinUntil(
      [&] { return completed_.load(std::memory_order_acquire) == num_tasks; });
}

void ThreadPool::ClaimSideTask() {
  // A plain load first: most wake-ups are for jobs, and a failed CAS would
  // still take the cache line from the caller.
  if (side_state_.load(std::memory_order_relaxed) != kPosted) return;
  int expected = kPosted;
  // Acquire: side_task_ was written before kPosted was released.
  if (!side_state_.compare_exchange_strong(expected, kClaimed,
                                           std::memory_order_acquire)) {
    return;
  }
  t_in_side_task = true;
  side_task_();
  t_in_side_task = false;
  side_state_.store(kDone, std::memory_order_release);
}

void ThreadPool::StartSideTask(absl::AnyInvocable<void()> task) {
  WaitSideTask();  // at once when none is outstanding
  if (workers_.empty() || t_in_side_task) {
    task();
    return;
  }
  side_task_ = std::move(task);
  side_state_.store(kPosted, std::memory_order_release);
  // Wake the workers as a job would. A generation with no job of its own:
  // RunTasks finds the claim state on an older generation and returns, and
  // the next ParallelFor moves past it.
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
}

void ThreadPool::WaitSideTask() {
  if (side_state_.load(std::memory_order_relaxed) == kNone) return;
  int expected = kPosted;
  if (side_state_.compare_exchange_strong(expected, kClaimed,
                                          std::memory_order_acquire)) {
    side_task_();  // no worker started it: run it here
  } else {
    SpinUntil(
        [&] { return side_state_.load(std::memory_order_acquire) == kDone; });
  }
  side_task_ = nullptr;
  side_state_.store(kNone, std::memory_order_relaxed);
}

}  // namespace strata::cpu
