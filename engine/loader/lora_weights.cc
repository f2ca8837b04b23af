#include "engine/loader/lora_weights.h"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace strata {

std::string_view LoraProjName(LoraProj proj) {
  switch (proj) {
    case LoraProj::kQ:
      return "self_attn.q_proj";
    case LoraProj::kK:
      return "self_attn.k_proj";
    case LoraProj::kV:
      return "self_attn.v_proj";
    case LoraProj::kO:
      return "self_attn.o_proj";
    case LoraProj::kGate:
      return "mlp.gate_proj";
    case LoraProj::kUp:
      return "mlp.up_proj";
    case LoraProj::kDown:
      return "mlp.down_proj";
  }
  return "unknown";
}

std::string LoraTensorName(int32_t loop, int32_t layer, LoraProj proj,
                           bool is_b) {
  return absl::StrCat("model.loops.", loop, ".layers.", layer, ".",
                      std::string(LoraProjName(proj)),
                      is_b ? ".lora_B" : ".lora_A");
}

std::array<int64_t, 2> LoraProjDims(const ModelConfig& config, LoraProj proj) {
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim =
      static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t kv_dim =
      static_cast<int64_t>(config.num_key_value_heads) * config.head_dim;
  switch (proj) {
    case LoraProj::kQ:
      return {q_dim, hidden};
    case LoraProj::kK:
    case LoraProj::kV:
      return {kv_dim, hidden};
    case LoraProj::kO:
      return {hidden, q_dim};
    case LoraProj::kGate:
    case LoraProj::kUp:
      return {inter, hidden};
    case LoraProj::kDown:
      return {hidden, inter};
  }
  return {0, 0};
}

}  // namespace strata
