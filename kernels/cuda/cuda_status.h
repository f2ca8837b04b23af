// CUDA runtime and cuBLAS(Lt) return codes as absl::Status, so every call on
// the host side can be checked and propagated (never aborts on a device
// error: a failed launch or an out-of-memory becomes a Status for the caller).
#ifndef STRATA_KERNELS_CUDA_CUDA_STATUS_H_
#define STRATA_KERNELS_CUDA_CUDA_STATUS_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string_view>

#include "absl/status/status.h"

namespace strata::cuda {

// OK for cudaSuccess; RESOURCE_EXHAUSTED for cudaErrorMemoryAllocation;
// INTERNAL otherwise. `what` names the call ("cudaMalloc of 4096 bytes").
absl::Status CudaStatus(cudaError_t error, std::string_view what);
absl::Status CublasStatus(cublasStatus_t status, std::string_view what);

// The error of the last kernel launch on this thread (cudaGetLastError).
absl::Status LastLaunchStatus(std::string_view kernel);

}  // namespace strata::cuda

// Evaluates a CUDA runtime call and returns its error as a Status.
#define STRATA_CUDA_RETURN_IF_ERROR(call)              \
  do {                                                 \
    if (absl::Status strata_cuda_status_ =             \
            ::strata::cuda::CudaStatus((call), #call); \
        !strata_cuda_status_.ok()) {                   \
      return strata_cuda_status_;                      \
    }                                                  \
  } while (false)

#define STRATA_CUBLAS_RETURN_IF_ERROR(call)              \
  do {                                                   \
    if (absl::Status strata_cublas_status_ =             \
            ::strata::cuda::CublasStatus((call), #call); \
        !strata_cublas_status_.ok()) {                   \
      return strata_cublas_status_;                      \
    }                                                    \
  } while (false)

#endif  // STRATA_KERNELS_CUDA_CUDA_STATUS_H_
