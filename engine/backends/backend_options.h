// BackendOptions: how the engine's backend is chosen and configured, as one
// typed struct. The daemon parses its flags into it once, at its edge
// (ParseBackendOptions), before any model file is read; every backend then
// takes what it honours from it and refuses, with a message naming the
// flag, what it cannot honour (CpuBackend::FromOptions,
// CudaBackend::FromOptions), so no flag is ever accepted and ignored.
#ifndef STRATA_ENGINE_BACKENDS_BACKEND_OPTIONS_H_
#define STRATA_ENGINE_BACKENDS_BACKEND_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"

namespace strata {

// Linear-layer weights.
enum class Quantization {
  kNone,        // the weights' type (or the dtype option)
  kWeightInt8,  // "int8": int8 weights, per-channel scales
  kLlmInt8,     // "llm.int8": LLM.int8() mixed precision (outlier columns)
};
std::string_view QuantizationName(Quantization quantization);

struct BackendOptions {
  // A backend of this binary (BackendNames(), backend_registry.h).
  std::string name = "cpu";
  // Weight and KV cache element type (kF16 or kBF16) on backends that store
  // them in 16 bits; unset = the backend's default.
  std::optional<ElementType> dtype;
  Quantization quantization = Quantization::kNone;
  // LLM.int8() outlier threshold on |activation|.
  float llm_int8_threshold = 6.0f;
  // int8 weight scales per group of this many inputs; 0 = per output
  // channel (the only choice on CUDA).
  int32_t int8_group_size = 0;
  // Device ordinal (device backends).
  int32_t device = 0;
  // Decode steps recorded and replayed as graphs (Backend::BeginStepGraph).
  bool step_graphs = false;
  // > 0: the KV pool takes this fraction of the device's memory, less what
  // the weights and a workspace need (Backend::KvCacheBudgetBytes).
  double gpu_memory_fraction = 0.0;
  // Host kernel threads; 0 = hardware concurrency.
  int32_t num_threads = 0;

  std::string DebugString() const;
};

// The flags' strings into BackendOptions: name as given (checked by the
// registry), dtype "" (the backend's default), "bf16" or "f16",
// quantization "none", "int8" or "llm.int8". INVALID_ARGUMENT naming the
// flag otherwise.
absl::StatusOr<BackendOptions> ParseBackendOptions(
    std::string_view name, std::string_view dtype,
    std::string_view quantization);

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_BACKEND_OPTIONS_H_
