// LowerIoThreadPriority on this test process's own threads: two named
// threads wait on a notification while their nice values are read back.
// (Each test runs in its own process under ctest; the nicer threads are
// harmless to a plain run of the binary.)
#include "server/io_priority.h"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "common/thread_name.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

int NiceOf(pid_t tid) {
  return getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
}

// A thread named `name` that waits until destroyed; tid() once started.
class NamedThread {
 public:
  explicit NamedThread(std::string name)
      : thread_([this, name] {
          SetCurrentThreadName(name);
          tid_.store(gettid());
          done_.WaitForNotification();
        }) {
    while (tid_.load() == 0) std::this_thread::yield();
  }
  ~NamedThread() {
    done_.Notify();
    thread_.join();
  }
  pid_t tid() const { return tid_.load(); }

 private:
  absl::Notification done_;
  std::atomic<pid_t> tid_{0};
  std::thread thread_;
};

TEST(IoPriorityTest, LowersEveryThreadButTheComputeOnes) {
  NamedThread compute("test-compute");
  NamedThread io("test-io");
  const int base = NiceOf(compute.tid());
  ASSERT_LE(base, 15);
  constexpr std::string_view kCompute[] = {"test-compute"};
  absl::StatusOr<IoPriorityReport> report = LowerIoThreadPriority(3, kCompute);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->compute_threads, 1);
  EXPECT_EQ(report->compute_nice, base);
  EXPECT_EQ(report->io_nice, base + 3);
  EXPECT_GE(report->io_threads, 2);  // this thread and test-io at least
  EXPECT_EQ(NiceOf(compute.tid()), base);
  EXPECT_EQ(NiceOf(io.tid()), base + 3);
  EXPECT_EQ(NiceOf(gettid()), base + 3);
  // Threads started later by a lowered thread inherit its nice value.
  NamedThread later("test-later");
  EXPECT_EQ(NiceOf(later.tid()), base + 3);
}

TEST(IoPriorityTest, LeavesNicerThreadsAloneAndStopsAtNineteen) {
  NamedThread compute("test-compute");
  NamedThread io("test-io");
  const int base = NiceOf(compute.tid());
  ASSERT_EQ(setpriority(PRIO_PROCESS, static_cast<id_t>(io.tid()), 19), 0);
  constexpr std::string_view kCompute[] = {"test-compute"};
  absl::StatusOr<IoPriorityReport> report = LowerIoThreadPriority(2, kCompute);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(NiceOf(io.tid()), 19);  // not raised back to base + 2
  EXPECT_EQ(NiceOf(gettid()), std::min(19, base + 2));
  report = LowerIoThreadPriority(40, kCompute);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->io_nice, 19);
  EXPECT_EQ(NiceOf(gettid()), 19);
  EXPECT_EQ(NiceOf(compute.tid()), base);
}

TEST(IoPriorityTest, NoComputeThreadIsAnError) {
  const int before = NiceOf(gettid());
  constexpr std::string_view kCompute[] = {"no-such-thread"};
  absl::StatusOr<IoPriorityReport> report = LowerIoThreadPriority(5, kCompute);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(NiceOf(gettid()), before);  // nothing changed
}

}  // namespace
}  // namespace strata
