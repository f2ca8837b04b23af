#include "engine/backends/backend_options.h"

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace strata {

std::string_view QuantizationName(Quantization quantization) {
  switch (quantization) {
    case Quantization::kNone:
      return "none";
    case Quantization::kWeightInt8:
      return "int8";
    case Quantization::kLlmInt8:
      return "llm.int8";
  }
  return "?";
}

std::string BackendOptions::DebugString() const {
  return absl::StrCat(
      "BackendOptions{name=", name, " dtype=",
      std::string(dtype.has_value() ? ElementTypeName(*dtype) : "default"),
      " quantization=", std::string(QuantizationName(quantization)),
      " llm_int8_threshold=", llm_int8_threshold,
      " int8_group_size=", int8_group_size, " device=", device,
      " step_graphs=", step_graphs,
      " gpu_memory_fraction=", gpu_memory_fraction,
      " num_threads=", num_threads, "}");
}

absl::StatusOr<BackendOptions> ParseBackendOptions(
    std::string_view name, std::string_view dtype,
    std::string_view quantization) {
  BackendOptions options;
  options.name = std::string(name);
  if (dtype == "bf16") {
    options.dtype = ElementType::kBF16;
  } else if (dtype == "f16") {
    options.dtype = ElementType::kF16;
  } else if (!dtype.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype: unknown value '", std::string(dtype),
                     "' (expected bf16 or f16, or empty for the backend's "
                     "default)"));
  }
  if (quantization == "none") {
    options.quantization = Quantization::kNone;
  } else if (quantization == "int8") {
    options.quantization = Quantization::kWeightInt8;
  } else if (quantization == "llm.int8") {
    options.quantization = Quantization::kLlmInt8;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--quantization: unknown value '", std::string(quantization),
        "' (expected none, int8 or llm.int8)"));
  }
  return options;
}

}  // namespace strata
