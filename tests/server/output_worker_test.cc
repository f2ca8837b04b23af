#include "server/output_worker.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(OutputWorkerTest, RunsTasksInOrderOnItsThread) {
  OutputWorker worker;
  std::vector<int> order;  // written on the worker, read after WaitIdle
  std::thread::id ran_on;
  for (int i = 0; i < 100; ++i) {
    if (i % 2 == 0) {
      worker.Post([&order, i] { order.push_back(i); });
    } else {
      worker.PostDeferred([&order, i] { order.push_back(i); });
    }
  }
  worker.Post([&ran_on] { ran_on = std::this_thread::get_id(); });
  ASSERT_TRUE(worker.WaitIdle(absl::Seconds(30)));
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_EQ(worker.num_done(), 101);
}

// A deferred post that finds the thread asleep owes a wake-up, and Wake()
// delivers it. Whether the thread sleeps at the post is its own timing, so
// the test posts until one finds it asleep (WakeOwed), leaving it time to
// fall asleep between tries.
TEST(OutputWorkerTest, ADeferredPostToASleepingThreadRunsOnceWoken) {
  OutputWorker worker;
  bool owed = false;
  for (int attempt = 0; attempt < 1000 && !owed; ++attempt) {
    ASSERT_TRUE(worker.WaitIdle(absl::Seconds(30)));
    absl::SleepFor(absl::Milliseconds(2));
    absl::Notification ran;
    worker.PostDeferred([&ran] { ran.Notify(); });
    owed = worker.WakeOwed();
    if (owed) worker.Wake();
    ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(30)));
  }
  ASSERT_TRUE(owed) << "no deferred post ever found the thread asleep";
  EXPECT_FALSE(worker.WakeOwed());
}

// WaitIdle wakes the thread itself: a deferred post nobody woke still runs.
// Posts from another thread keep the worker busy meanwhile, so that some
// deferred posts find it running and some asleep.
TEST(OutputWorkerTest, WaitIdleRunsDeferredPosts) {
  OutputWorker worker;
  std::atomic<int> ran{0};
  std::thread poster([&] {
    for (int i = 0; i < 200; ++i) worker.Post([&ran] { ran.fetch_add(1); });
  });
  for (int i = 0; i < 200; ++i) {
    worker.PostDeferred([&ran] { ran.fetch_add(1); });
  }
  poster.join();
  ASSERT_TRUE(worker.WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(ran.load(), 400);
  // Then a deferred post that found the thread asleep, left unwoken: posts
  // until one does (WakeOwed), as above.
  int posted = 400;
  bool owed = false;
  for (int attempt = 0; attempt < 1000 && !owed; ++attempt) {
    absl::SleepFor(absl::Milliseconds(2));
    worker.PostDeferred([&ran] { ran.fetch_add(1); });
    ++posted;
    owed = worker.WakeOwed();
    ASSERT_TRUE(worker.WaitIdle(absl::Seconds(30)));
    EXPECT_EQ(ran.load(), posted);
  }
  ASSERT_TRUE(owed) << "no deferred post ever found the thread asleep";
}

// The destructor runs every task posted, deferred ones included, and one
// that found the thread asleep and was never woken.
TEST(OutputWorkerTest, DestructionRunsWhatWasPosted) {
  std::atomic<int> ran{0};
  {
    OutputWorker worker;
    for (int i = 0; i < 50; ++i) {
      worker.PostDeferred([&ran] { ran.fetch_add(1); });
    }
  }
  EXPECT_EQ(ran.load(), 50);

  bool owed = false;
  for (int attempt = 0; attempt < 1000 && !owed; ++attempt) {
    std::atomic<int> count{0};
    {
      OutputWorker worker;
      absl::SleepFor(absl::Milliseconds(2));
      worker.PostDeferred([&count] { count.fetch_add(1); });
      owed = worker.WakeOwed();
    }
    EXPECT_EQ(count.load(), 1);
  }
  ASSERT_TRUE(owed) << "no deferred post ever found the thread asleep";
}

}  // namespace
}  // namespace strata
