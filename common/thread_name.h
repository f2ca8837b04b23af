// Thread names, as top -H, ps -L, perf and /proc/<pid>/task/*/comm show
// them. The project's threads are named "strata-<role>".
#ifndef STRATA_COMMON_THREAD_NAME_H_
#define STRATA_COMMON_THREAD_NAME_H_

#include <pthread.h>

#include <string>
#include <string_view>

namespace strata {

// The engine's compute threads (the engine loop's and the CPU kernels' pool
// workers) and the metrics listener's: the threads that keep the process's
// priority when stratad lowers the others' (server/io_priority.h tells them
// apart by name).
inline constexpr std::string_view kEngineThreadName = "strata-engine";
inline constexpr std::string_view kKernelThreadName = "strata-kernel";
inline constexpr std::string_view kMetricsThreadName = "strata-metrics";

// Names the calling thread; Linux keeps at most 15 bytes, longer names are
// cut there.
inline void SetCurrentThreadName(std::string_view name) {
  const std::string cut(name.substr(0, 15));
  pthread_setname_np(pthread_self(), cut.c_str());
}

}  // namespace strata

#endif  // STRATA_COMMON_THREAD_NAME_H_
