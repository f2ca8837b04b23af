#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace strata::cpu {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t tasks : {0, 1, 2, 7, 100, 1000}) {
      std::vector<std::atomic<int>> hits(tasks);
      pool.ParallelFor(tasks, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < tasks; ++i) {
        ASSERT_EQ(hits[i].load(), 1) << threads << " threads, task " << i;
      }
    }
  }
}

TEST(ThreadPoolTest, ManyJobsBackToBack) {
  ThreadPool pool(2);
  int64_t total = 0;
  for (int job = 0; job < 2000; ++job) {
    std::atomic<int64_t> sum{0};
    pool.ParallelFor(8, [&](int64_t i) { sum.fetch_add(i); });
    total += sum.load();
  }
  EXPECT_EQ(total, 2000 * 28);
}

// A worker that wakes late for a finished job must never claim a task of the
// next one: jobs alternate between few and many tasks (so a late worker
// reading the new task count with the old claim state would find unclaimed
// "tasks" of the old job), with more threads than cores so that workers and
// the caller are preempted mid-job. Every task must run exactly once per
// job, and no ParallelFor may hang (an over-counted job never returns). The
// interleaving that broke this (see ParallelFor) needs the caller preempted
// between two stores, so this stress test makes it possible, not certain.
TEST(ThreadPoolTest, LateWorkersNeverRunTasksOfTheNextJob) {
  ThreadPool pool(6);
  constexpr int kMaxTasks = 64;
  std::vector<std::atomic<int>> hits(kMaxTasks);
  for (int job = 0; job < 60000; ++job) {
    const int64_t tasks = job % 2 == 0 ? 1 + job % 3 : kMaxTasks;
    for (int64_t i = 0; i < tasks; ++i) hits[i].store(0);
    pool.ParallelFor(tasks, [&](int64_t i) { hits[i].fetch_add(1); });
    for (int64_t i = 0; i < tasks; ++i) {
      ASSERT_EQ(hits[i].load(), 1) << "job " << job << " task " << i;
    }
  }
}

TEST(ThreadPoolTest, ZeroMeansHardwareConcurrency) {
  ThreadPool pool(0);
  EXPECT_GE(pool.num_threads(), 1);
}

}  // namespace
}  // namespace strata::cpu
