// The one place where Strata's absl::Status becomes the grpc::Status a client
// sees (and back, for Strata's own clients). The numeric codes of the two
// enums are the same canonical codes, so the mapping is one-to-one.
#ifndef STRATA_SERVER_STATUS_UTIL_H_
#define STRATA_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace strata {

// Same code, same message. Codes outside the canonical range become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients (strata-cli, tests).
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace strata

#endif  // STRATA_SERVER_STATUS_UTIL_H_
