#include "engine/backends/backend_registry.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backends/cpu/cpu_backend.h"
// The only device #ifdef above a backend's own files: strata_cuda_backend
// exists only in builds that found nvcc (cmake/cuda.cmake).
#ifdef STRATA_WITH_CUDA
#include "engine/backends/cuda/cuda_backend.h"
#endif

namespace strata {

std::vector<std::string_view> BackendNames() {
#ifdef STRATA_WITH_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const BackendOptions& options) {
  if (options.name == "cpu") return CpuBackend::FromOptions(options);
#ifdef STRATA_WITH_CUDA
  if (options.name == "cuda") return CudaBackend::FromOptions(options);
#else
  if (options.name == "cuda") {
    return absl::FailedPreconditionError(
        "no CUDA device: backend 'cuda' is not built into this binary (no "
        "CUDA toolkit at build time); use 'cpu'");
  }
#endif
  return absl::InvalidArgumentError(absl::StrCat(
      "--backend: unknown backend '", options.name, "' (this binary has: ",
      absl::StrJoin(BackendNames(), ", ",
                    [](std::string* out, std::string_view name) {
                      out->append(name.data(), name.size());
                    }),
      ")"));
}

}  // namespace strata
