// The backends built into this binary, by name. The one place above the
// backends' own folders that knows which exist: the engine asks for a
// Backend by BackendOptions::name and never names a concrete class.
#ifndef STRATA_ENGINE_BACKENDS_BACKEND_REGISTRY_H_
#define STRATA_ENGINE_BACKENDS_BACKEND_REGISTRY_H_

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/backends/backend_options.h"

namespace strata {

// "cpu", then "cuda" where the binary was built with the CUDA toolkit.
std::vector<std::string_view> BackendNames();

// Creates the backend options.name names, which checks the options it
// cannot honour (INVALID_ARGUMENT naming the flag). An unknown name is
// INVALID_ARGUMENT; "cuda" in a binary without it, or without a visible GPU,
// FAILED_PRECONDITION "no CUDA device: ...".
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const BackendOptions& options);

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_BACKEND_REGISTRY_H_
