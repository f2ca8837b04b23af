// The project's two status macros, for functions returning absl::Status or
// absl::StatusOr<T> (Debian 12's abseil has no public equivalents).
//
//   RETURN_IF_ERROR(backend->MatMul(...));      // returns the error, if any
//   ASSIGN_OR_RETURN(Tensor t, backend->Allocate(...));  // t = *result
//
// Device-specific forms that turn a CUDA or cuBLAS error code into a Status
// live next to their runtime (kernels/cuda/cuda_status.h).
#ifndef STRATA_COMMON_STATUS_MACROS_H_
#define STRATA_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"

#define STRATA_STATUS_CONCAT_INNER(a, b) a##b
#define STRATA_STATUS_CONCAT(a, b) STRATA_STATUS_CONCAT_INNER(a, b)

#define STRATA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(*tmp)

// lhs = *expr, or returns expr's error.
#define ASSIGN_OR_RETURN(lhs, expr)                                        \
  STRATA_ASSIGN_OR_RETURN_IMPL(STRATA_STATUS_CONCAT(status_or_, __LINE__), \
                               lhs, expr)

// Returns expr's error, if any.
#define RETURN_IF_ERROR(expr)                                         \
  do {                                                                \
    if (absl::Status status_ = (expr); !status_.ok()) return status_; \
  } while (false)

#endif  // STRATA_COMMON_STATUS_MACROS_H_
