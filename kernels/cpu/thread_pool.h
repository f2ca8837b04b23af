// A small fork-join thread pool for the CPU kernels.
//
// ParallelFor(n, task) runs task(i) for every i in [0, n) on the workers and
// the calling thread, and returns when all are done. Tasks are handed out
// dynamically (an atomic counter), so a kernel must never let its result
// depend on which thread ran which task: every kernel here partitions its
// output so that each element is computed by exactly one task with a fixed
// operation order (the batch-invariance rule, docs/engine.md).
//
// Threading: ParallelFor must be called from one thread at a time and not
// from inside a task. Idle workers spin briefly after a job (decode steps
// issue many small jobs back to back) and then sleep on a futex. The caller
// runs tasks too and never waits for a worker that has not started one, so
// an overloaded machine (workers descheduled) degrades to running inline
// rather than stalling.
#ifndef STRATA_KERNELS_CPU_THREAD_POOL_H_
#define STRATA_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

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

 private:
  void WorkerLoop();
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
};

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_THREAD_POOL_H_
