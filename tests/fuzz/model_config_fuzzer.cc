// Arbitrary bytes as config.json: ModelConfig::FromJson must return a
// config that passed its checks or an error, never crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/loader/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<strata::ModelConfig> config =
      strata::ModelConfig::FromJson(json, "config.json");
  if (config.ok()) (void)config->DebugString();
  return 0;
}
