#include "server/io_priority.h"

#include <sys/resource.h>
#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {

struct ThreadInfo {
  pid_t tid;
  std::string name;
  int nice;
};

// The process's threads with their names and nice values; threads that exit
// while this runs are left out.
std::vector<ThreadInfo> ListThreads() {
  std::vector<ThreadInfo> threads;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/self/task", ec)) {
    int tid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &tid)) continue;
    std::ifstream comm(entry.path() / "comm");
    std::string name;
    if (!std::getline(comm, name)) continue;  // exited
    errno = 0;
    const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
    if (nice == -1 && errno != 0) continue;  // exited
    threads.push_back({static_cast<pid_t>(tid), std::move(name), nice});
  }
  return threads;
}

}  // namespace

absl::StatusOr<IoPriorityReport> LowerIoThreadPriority(
    int nice_delta, std::span<const std::string_view> compute_names) {
  const std::vector<ThreadInfo> threads = ListThreads();
  auto is_compute = [&](const ThreadInfo& t) {
    return std::find(compute_names.begin(), compute_names.end(), t.name) !=
           compute_names.end();
  };
  IoPriorityReport report;
  std::optional<int> compute_nice;
  for (const ThreadInfo& t : threads) {
    if (!is_compute(t)) continue;
    ++report.compute_threads;
    compute_nice = std::min(compute_nice.value_or(t.nice), t.nice);
  }
  if (!compute_nice.has_value()) {
    return absl::FailedPreconditionError(
        "none of the threads that keep their priority (engine, kernel "
        "workers, metrics) found in /proc/self/task");
  }
  report.compute_nice = *compute_nice;
  report.io_nice = std::min(19, *compute_nice + std::max(0, nice_delta));
  for (const ThreadInfo& t : threads) {
    if (is_compute(t)) continue;
    ++report.io_threads;
    if (t.nice >= report.io_nice) continue;
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(t.tid), report.io_nice) !=
            0 &&
        errno != ESRCH) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("setpriority(thread ", t.tid, " \"", t.name,
                              "\", nice ", report.io_nice, ")"));
    }
  }
  return report;
}

}  // namespace strata
