// Model hyper-parameters read from a Hugging Face config.json.
//
// Only Llama-family decoder architectures are supported (Llama, Mistral,
// Qwen2). FromJson validates everything the forward pass relies on so that
// later code may assume consistent sizes; every error names the source file
// and the offending key.
#ifndef STRATA_ENGINE_LOADER_MODEL_CONFIG_H_
#define STRATA_ENGINE_LOADER_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/step.h"

namespace strata {

// RoPE frequency scaling (config.json "rope_scaling"). Only the Llama 3 scheme
// is supported; "default" or an absent/null rope_scaling means no scaling.
struct RopeScaling {
  std::string rope_type;  // "llama3" (others => INVALID_ARGUMENT naming
                          // rope_scaling.rope_type, except "default"/absent
                          // which means none). Key "type" is accepted too.
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int32_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // architectures[0]: LlamaForCausalLM,
                             // Qwen2ForCausalLM, MistralForCausalLM,
                             // StrataRecursiveLlamaForCausalLM (others =>
                             // UNIMPLEMENTED naming it)
  std::string model_type;
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_hidden_layers = 0;
  int32_t num_attention_heads = 0;
  int32_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int32_t head_dim = 0;  // defaults to hidden_size / num_attention_heads
  int32_t max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // true for qwen2 (q/k/v bias) unless stated
                                // otherwise
  std::string torch_dtype;      // "float32" | "float16" | "bfloat16"
  std::optional<TokenId> bos_token_id;
  std::vector<TokenId> eos_token_ids;  // eos_token_id may be int or list

  // Recursive models (architecture StrataRecursiveLlamaForCausalLM, see
  // docs/recursive-models.md): the num_hidden_layers (K) unique layers run
  // num_loops (N) times; loop l of layer k is KV layer l * K + k. A plain
  // Llama is N = 1, lora_rank 0 (other architectures refuse these keys).
  int32_t num_loops = 1;    // N >= 1
  int32_t lora_rank = 0;    // r >= 0; 0 = no per-(loop, layer) LoRA
  float lora_alpha = 0.0f;  // required when lora_rank > 0

  // K * N: the KV cache holds one K and one V per (loop, layer).
  int32_t num_kv_layers() const { return num_hidden_layers * num_loops; }
  // alpha / r, the factor of every LoRA delta B @ A (0 without LoRA).
  float lora_scale() const {
    return lora_rank > 0 ? lora_alpha / static_cast<float>(lora_rank) : 0.0f;
  }

  // Parses and validates a config.json document. `source_name` (usually the
  // file name) prefixes every error message. Validates: positive sizes, heads
  // divide evenly, kv heads divide heads, head_dim even.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json,
                                              std::string_view source_name);
  // Reads `path` and calls FromJson with the path as source name.
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  std::string DebugString() const;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOADER_MODEL_CONFIG_H_
