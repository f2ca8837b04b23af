// LtGemm: the GEMMs of the CUDA backend through cuBLASLt, in the row-major
// Linear layout of the engine: out[n, m] = x[n, k] * w[m, k]^T.
//
// cuBLAS is column-major, so the call is the "TN" GEMM D[m, n] = op(A) * B
// with A = w viewed as a column-major [k, m] matrix (transposed) and B = x
// viewed as a column-major [k, n] matrix. TN is also the one layout cuBLASLt
// accepts for int8 IMMA kernels with regular (non-COL32) ordering, which is
// the only int8 ordering Hopper supports (COL32 / COL4_4R2_8C /
// COL32_2R_4R4 are Turing/Ampere-only): so int8 uses plain column-major with
// k and m multiples of 4 and 16-byte aligned pointers (docs/cuda.md).
//
// Types: f16 x f16 and bf16 x bf16 accumulate and write f32
// (CUBLAS_COMPUTE_32F); f32 x f32 in f32; int8 x int8 in int32
// (CUBLAS_COMPUTE_32I) writing int32. Plans (descriptors + heuristic algo)
// are cached per shape, so a steady-state call does no allocation.
//
// Threading: one thread (the engine's) uses an instance.
#ifndef STRATA_KERNELS_CUDA_LT_GEMM_H_
#define STRATA_KERNELS_CUDA_LT_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::cuda {

enum class GemmType { kF32, kF16, kBF16, kI8 };

class LtGemm {
 public:
  // workspace_bytes of device memory for cuBLASLt (32 MiB suits Hopper).
  static absl::StatusOr<std::unique_ptr<LtGemm>> Create(size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  //   x: [n, k] of type, w: [m, k] of type, out: [n, m] f32 (int32 for kI8)
  // UNIMPLEMENTED when cuBLASLt has no algorithm for the shape (int8 with k
  // or m not a multiple of 4).
  absl::Status MatMul(GemmType type, const void* x, const void* w, int64_t n,
                      int64_t m, int64_t k, void* out, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
  };
  using Key = std::tuple<int, int64_t, int64_t, int64_t>;

  LtGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes);
  absl::StatusOr<const Plan*> GetPlan(GemmType type, int64_t n, int64_t m,
                                      int64_t k);

  cublasLtHandle_t handle_;
  void* workspace_;  // device, workspace_bytes_
  size_t workspace_bytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_LT_GEMM_H_
