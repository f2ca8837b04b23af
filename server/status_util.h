// The one place where Strata's absl::Status becomes the grpc::Status a client
// sees (and back, for Strata's own clients). The numeric codes of the two
// enums are the same canonical codes, so the mapping is one-to-one.
#ifndef STRATA_SERVER_STATUS_UTIL_H_
#define STRATA_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace strata {

// Same code, same message. Codes outside the canonical range become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients (strata-cli, tests).
absl::Status FromGrpcStatus(const grpc::Status& status);

// How close to its deadline a cancelled call counts as having reached it.
// A client whose own timer fires at the deadline sends a cancel that can
// reach the server a little before the server's copy of the deadline (the
// grpc-timeout header is relative to when the call was sent); the call
// still ended because of its deadline.
inline constexpr absl::Duration kDeadlineTolerance = absl::Milliseconds(250);

// Why a call that ended at `now`, before its generation did, ended: its
// deadline (DEADLINE_EXCEEDED when `now` is within kDeadlineTolerance of it
// or past it) or a cancellation (CANCELLED). Decided by the deadline, not by
// whether the client's cancel or the server's timer arrived first.
absl::Status CancellationStatus(absl::Time now, absl::Time deadline);

// Why a stream whose write failed at `now` ended: the same deadline test as
// CancellationStatus (a client's deadline can fail the write in flight
// before gRPC reports the cancel), else the client stopped reading
// (CANCELLED).
absl::Status StreamWriteFailureStatus(absl::Time now, absl::Time deadline);

}  // namespace strata

#endif  // STRATA_SERVER_STATUS_UTIL_H_
