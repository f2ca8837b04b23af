// A small fork-join thread pool for the CPU kernels.
//
// ParallelFor(n, task) runs task(i) for every i in [0, n) on the workers and
// the calling thread, and returns when all are done. Tasks are handed out
// dynamically (an atomic counter), so a kernel must never let its result
// depend on which thread ran which task: every kernel here partitions its
// output so that each element is computed by exactly one task with a fixed
// operation order (the batch-invariance rule, docs/engine.md).
//
// StartSideTask(task) hands one task to a worker and returns at once;
// WaitSideTask() waits for it. The caller goes on with its own work, its
// ParallelFor jobs included (a worker busy with the side task joins them when
// it is done): this is for work that would otherwise leave the workers
// spinning, e.g. a decode step's small serial ops beside the host sampling.
// Inside the side task ParallelFor runs inline.
//
// Threading: ParallelFor, StartSideTask and WaitSideTask must be called from
// one thread at a time and not from inside a task. Idle workers spin briefly
// after a job (decode steps issue many small jobs back to back) and then sleep
// on a futex. The caller runs tasks too and never waits for a worker that has
// not started one, so an overloaded machine (workers descheduled) degrades to
// running inline rather than stalling.
#ifndef STRATA_KERNELS_CPU_THREAD_POOL_H_
#define STRATA_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"

namespace strata::cpu {

class ThreadPool {
 public:
  // num_threads counts the calling thread: 1 runs everything inline. 0 means
  // std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  void ParallelFor(int64_t num_tasks, absl::FunctionRef<void(int64_t)> task);

  // Runs `task` on a worker (inline without one), at most one at a time: a
  // side task still outstanding is waited for first (WaitSideTask()).
  // Whatever the task touches, the caller must leave alone until
  // WaitSideTask() returns.
  void StartSideTask(absl::AnyInvocable<void()> task);
  // Returns once the side task has run; runs it here if no worker has
  // started it (the caller never waits for a descheduled worker). Returns at
  // once without one.
  void WaitSideTask();

 private:
  void WorkerLoop();
  // Runs the posted side task if no other thread has claimed it.
  void ClaimSideTask();
  // Claims and runs tasks of job `generation` until none is left.
  void RunTasks(uint32_t generation);

  std::vector<std::thread> workers_;
  // Bumped once per job (and at shutdown); idle workers wait on it.
  std::atomic<uint32_t> generation_{0};
  // (generation << 32) | next unclaimed task. A task is claimed by a CAS
  // that also checks the generation, so a worker that wakes late can never
  // claim a task of a finished or newer job; the caller therefore waits only
  // for tasks that were claimed, never for a worker that is still asleep or
  // descheduled.
  std::atomic<uint64_t> state_{0};
  // Tasks of the current job that have finished.
  std::atomic<int64_t> completed_{0};
  std::atomic<bool> stop_{false};
  // The current job; written by the caller after moving state_ to it (see
  // ParallelFor) and before publishing generation_.
  std::atomic<int64_t> num_tasks_{0};
  std::atomic<const absl::FunctionRef<void(int64_t)>*> task_{nullptr};
  // The side task: kNone, then kPosted (side_task_ written), kClaimed (by
  // the thread that runs it) and kDone; WaitSideTask() sets kNone again.
  enum SideState : int { kNone, kPosted, kClaimed, kDone };
  std::atomic<int> side_state_{kNone};
  absl::AnyInvocable<void()> side_task_;
};

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_THREAD_POOL_H_
