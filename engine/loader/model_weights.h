// Host f32 weights of a Llama-family model (Hugging Face names in comments).
// All matrices are row-major [out_features, in_features], as stored by HF.
#ifndef STRATA_ENGINE_LOADER_MODEL_WEIGHTS_H_
#define STRATA_ENGINE_LOADER_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/loader/checkpoint.h"
#include "engine/loader/lora_weights.h"
#include "engine/loader/model_config.h"

namespace strata {

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]  input_layernorm.weight
  std::vector<float> q_proj;      // [num_heads*head_dim, hidden]
  std::vector<float> k_proj;      // [num_kv_heads*head_dim, hidden]
  std::vector<float> v_proj;      // [num_kv_heads*head_dim, hidden]
  std::vector<float> q_bias, k_bias,
      v_bias;                              // [q_dim]/[kv_dim]; empty unless
                                           // attention_bias
  std::vector<float> o_proj;               // [hidden, num_heads*head_dim]
  std::vector<float> post_attention_norm;  // [hidden]
  std::vector<float> gate_proj;            // [intermediate, hidden]
  std::vector<float> up_proj;              // [intermediate, hidden]
  std::vector<float> down_proj;            // [hidden, intermediate]
};

struct ModelWeights {
  std::vector<float> embed_tokens;   // [vocab, hidden]
  std::vector<LayerWeights> layers;  // [num_hidden_layers]
  std::vector<float> final_norm;     // [hidden]
  std::vector<float> lm_head;        // [vocab, hidden]; empty when tied (use
                                     // embed_tokens)
  // Recursive models with lora_rank > 0: the LoRA of (loop l, layer k) at
  // l * num_hidden_layers + k. [num_loops * num_hidden_layers]; empty
  // without LoRA.
  std::vector<LayerLoraWeights> lora;

  // Loads and converts every tensor, checking shapes against config (tensor
  // names model.embed_tokens.weight,
  // model.layers.{i}.self_attn.{q,k,v,o}_proj.weight/.bias,
  // model.layers.{i}.input_layernorm.weight, .post_attention_layernorm.weight,
  // .mlp.{gate,up,down}_proj.weight, model.norm.weight, lm_head.weight). When
  // tie_word_embeddings is false but lm_head.weight is missing => error.
  // With lora_rank > 0 also every model.loops.{l}.layers.{k}.{proj}.lora_A
  // [r, in] / lora_B [out, r] (lora.h); without, a stored model.loops.*
  // tensor is refused.
  // Converts straight from the memory map into the destination vectors (one
  // f32 copy of the model in memory), on 2 threads.
  static absl::StatusOr<ModelWeights> Load(const Checkpoint& checkpoint,
                                           const ModelConfig& config);
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOADER_MODEL_WEIGHTS_H_
