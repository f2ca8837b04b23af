#include "server/status_util.h"

#include <string>

namespace strata {
namespace {

// Both enums number the canonical codes 0 (OK) .. 16 (UNAUTHENTICATED).
constexpr int kMaxCanonicalCode = 16;

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  int code = static_cast<int>(status.code());
  if (code < 0 || code > kMaxCanonicalCode) {
    code = static_cast<int>(grpc::StatusCode::UNKNOWN);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  int code = static_cast<int>(status.error_code());
  if (code < 0 || code > kMaxCanonicalCode) {
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      status.error_message());
}

absl::Status CancellationStatus(absl::Time now, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture() &&
      now >= deadline - kDeadlineTolerance) {
    return absl::DeadlineExceededError("the request's deadline passed");
  }
  return absl::CancelledError("the call was cancelled");
}

absl::Status StreamWriteFailureStatus(absl::Time now, absl::Time deadline) {
  absl::Status status = CancellationStatus(now, deadline);
  if (absl::IsCancelled(status)) {
    return absl::CancelledError("the client stopped reading");
  }
  return status;
}

}  // namespace strata
