// Abseil Mutex deadlock detection for the project's programs.
#ifndef STRATA_COMMON_MUTEX_MODE_H_
#define STRATA_COMMON_MUTEX_MODE_H_

#include "absl/synchronization/mutex.h"

namespace strata {

// Debian's abseil is built with Mutex deadlock detection on: every lock, ours
// and gRPC's (grpc_core::Mutex is an absl::Mutex), then updates a global lock
// graph under a global lock. It is a debugging aid; stratad and the
// benchmarks, built with NDEBUG (scripts/build.sh and the sanitizer builds
// are), turn it off at the top of main. Test binaries never call this, so
// the in-process tests keep it in every build. A benchmark client that pays
// it takes that CPU from a daemon on the same cores.
inline void UseReleaseMutexMode() {
#ifdef NDEBUG
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

}  // namespace strata

#endif  // STRATA_COMMON_MUTEX_MODE_H_
