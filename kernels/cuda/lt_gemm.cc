#include "kernels/cuda/lt_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace strata::cuda {
namespace {

cudaDataType_t InputType(GemmType type) {
  switch (type) {
    case GemmType::kF32:
      return CUDA_R_32F;
    case GemmType::kF16:
      return CUDA_R_16F;
    case GemmType::kBF16:
      return CUDA_R_16BF;
    case GemmType::kI8:
      return CUDA_R_8I;
  }
  return CUDA_R_32F;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LtGemm>> LtGemm::Create(size_t workspace_bytes) {
  cublasLtHandle_t handle = nullptr;
  STRATA_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&handle));
  void* workspace = nullptr;
  if (workspace_bytes > 0) {
    if (absl::Status s =
            CudaStatus(cudaMalloc(&workspace, workspace_bytes),
                       absl::StrCat("cudaMalloc of the cuBLASLt workspace (",
                                    workspace_bytes, " bytes)"));
        !s.ok()) {
      cublasLtDestroy(handle);
      return s;
    }
  }
  return std::unique_ptr<LtGemm>(
      new LtGemm(handle, workspace, workspace_bytes));
}

LtGemm::LtGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes)
    : handle_(handle),
      workspace_(workspace),
      workspace_bytes_(workspace_bytes) {}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
    cublasLtMatmulDescDestroy(plan.desc);
  }
  if (workspace_ != nullptr) cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

absl::StatusOr<const LtGemm::Plan*> LtGemm::GetPlan(GemmType type, int64_t n,
                                                    int64_t m, int64_t k) {
  const Key key{static_cast<int>(type), n, m, k};
  if (auto it = plans_.find(key); it != plans_.end()) return &it->second;

  const bool int8 = type == GemmType::kI8;
  const cublasComputeType_t compute =
      int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale_type = int8 ? CUDA_R_32I : CUDA_R_32F;
  const cudaDataType_t in = InputType(type);
  const cudaDataType_t out = int8 ? CUDA_R_32I : CUDA_R_32F;

  Plan plan;
  // Destroys whatever was created if a later step fails.
  auto cleanup = [&plan]() {
    if (plan.a != nullptr) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b != nullptr) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c != nullptr) cublasLtMatrixLayoutDestroy(plan.c);
    if (plan.desc != nullptr) cublasLtMatmulDescDestroy(plan.desc);
  };
  auto fail = [&](absl::Status s) {
    cleanup();
    return s;
  };
  absl::Status s =
      CublasStatus(cublasLtMatmulDescCreate(&plan.desc, compute, scale_type),
                   "cublasLtMatmulDescCreate");
  if (!s.ok()) return fail(s);
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  s = CublasStatus(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                     &trans_a, sizeof(trans_a)),
      "set TRANSA");
  if (!s.ok()) return fail(s);
  s = CublasStatus(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                     &trans_b, sizeof(trans_b)),
      "set TRANSB");
  if (!s.ok()) return fail(s);
  // A: w as column-major [k, m]; B: x as column-major [k, n]; C/D: [m, n].
  s = CublasStatus(cublasLtMatrixLayoutCreate(&plan.a, in, k, m, k),
                   "layout A");
  if (!s.ok()) return fail(s);
  s = CublasStatus(cublasLtMatrixLayoutCreate(&plan.b, in, k, n, k),
                   "layout B");
  if (!s.ok()) return fail(s);
  s = CublasStatus(cublasLtMatrixLayoutCreate(&plan.c, out, m, n, m),
                   "layout C");
  if (!s.ok()) return fail(s);

  cublasLtMatmulPreference_t pref = nullptr;
  s = CublasStatus(cublasLtMatmulPreferenceCreate(&pref),
                   "cublasLtMatmulPreferenceCreate");
  if (!s.ok()) return fail(s);
  const uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  s = CublasStatus(
      cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.c,
                                     plan.c, pref, 1, &result, &found),
      absl::StrCat("cublasLtMatmulAlgoGetHeuristic (n=", n, " m=", m, " k=", k,
                   " type=", static_cast<int>(type), ")"));
  cublasLtMatmulPreferenceDestroy(pref);
  if (!s.ok()) return fail(s);
  if (found == 0) {
    return fail(absl::UnimplementedError(
        absl::StrCat("cuBLASLt has no algorithm for n=", n, " m=", m, " k=", k,
                     " type=", static_cast<int>(type))));
  }
  plan.algo = result.algo;
  auto [it, inserted] = plans_.emplace(key, plan);
  return &it->second;
}

absl::Status LtGemm::MatMul(GemmType type, const void* x, const void* w,
                            int64_t n, int64_t m, int64_t k, void* out,
                            cudaStream_t stream) {
  if (n == 0 || m == 0) return absl::OkStatus();
  absl::StatusOr<const Plan*> plan = GetPlan(type, n, m, k);
  if (!plan.ok()) return plan.status();
  const float alpha_f = 1.0f, beta_f = 0.0f;
  const int32_t alpha_i = 1, beta_i = 0;
  const bool int8 = type == GemmType::kI8;
  const void* alpha = int8 ? static_cast<const void*>(&alpha_i) : &alpha_f;
  const void* beta = int8 ? static_cast<const void*>(&beta_i) : &beta_f;
  return CublasStatus(
      cublasLtMatmul(handle_, (*plan)->desc, alpha, w, (*plan)->a, x,
                     (*plan)->b, beta, out, (*plan)->c, out, (*plan)->c,
                     &(*plan)->algo, workspace_, workspace_bytes_, stream),
      "cublasLtMatmul");
}

}  // namespace strata::cuda
