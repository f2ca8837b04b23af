// The load generator's safety rail: it only drives daemons on this machine
// unless told otherwise, so a mistyped address cannot load-test someone
// else's server.
#ifndef STRATA_BENCH_TARGET_H_
#define STRATA_BENCH_TARGET_H_

#include <string>

#include "absl/status/status.h"

namespace strata::bench {

// True when the gRPC target names this machine: localhost, 127.0.0.0/8,
// ::1 (any of gRPC's "dns:", "ipv4:", "ipv6:" prefixes), or a unix socket.
bool IsLoopbackTarget(const std::string& target);

// OK for loopback targets, or for any well-formed target when
// `allow_remote`; otherwise PERMISSION_DENIED naming the flag to pass.
absl::Status CheckTarget(const std::string& target, bool allow_remote);

}  // namespace strata::bench

#endif  // STRATA_BENCH_TARGET_H_
