// LlamaModel: the Llama-family forward pass (Llama 2/3, Mistral, Qwen2),
// written once against the Backend ops, over a batch of work items of
// different lengths, with a paged KV cache.
//
// Design: all new tokens of all items are flattened into one batch
// [num_tokens, hidden]. Token-wise ops (norms, projections, RoPE, MLP) run on
// the flat batch; each token's K/V goes to its slot through its item's block
// table; attention runs per sequence over its cached prefix plus its new
// tokens (causal within the chunk); the final norm and LM head run only for
// the rows whose logits are wanted. Because every backend op is row-wise or
// per-sequence with a fixed reduction order, a sequence's logits do not
// depend on what else is in the batch (batch invariance, docs/engine.md).
//
// The KV cache (owned here, sized by Options::num_blocks) is, per layer,
//   K, V: [num_blocks, num_kv_heads, block_size, head_dim]
// The scheduler owns which blocks a sequence uses; the model only reads and
// writes through block tables.
//
// Threading: not thread-safe; one engine thread calls Forward().
#ifndef STRATA_ENGINE_LLAMA_MODEL_H_
#define STRATA_ENGINE_LLAMA_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/step.h"

namespace strata {

class LlamaModel {
 public:
  struct Options {
    int32_t block_size = 16;  // tokens per KV block
    int32_t num_blocks = 0;   // KV blocks in the pool (>= 1)
  };

  // Uploads the weights (consumed, so a host backend adopts them without a
  // copy) and allocates the KV cache on `backend`, which must outlive the
  // model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      const ModelConfig& config, ModelWeights weights, Backend* backend,
      const Options& options);

  // Bytes one KV block takes: K and V of block_size tokens for every layer,
  // element_bytes per value (4 for f32 caches, 2 for f16/bf16).
  static int64_t KvBytesPerBlock(const ModelConfig& config, int32_t block_size,
                                 int64_t element_bytes = 4);

  // RoPE inverse frequencies theta^(-2i/head_dim), with the Llama 3
  // rope_scaling smoothing when configured. [head_dim / 2]
  static absl::StatusOr<std::vector<float>> RopeInverseFrequencies(
      const ModelConfig& config);

  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  int32_t block_size() const { return options_.block_size; }
  int32_t num_blocks() const { return options_.num_blocks; }

  // Cheap checks that the items are safe to run: non-empty token lists, token
  // ids in the vocabulary, positions within max_position_embeddings, block
  // tables long enough with every block id in range. INVALID_ARGUMENT naming
  // the item otherwise.
  absl::Status Validate(std::span<const WorkItem> items) const;

  // Runs the forward pass over every item (writing their K/V into the cache)
  // and returns the logits of the requested rows. Rows index the flattened
  // new tokens: item 0's tokens first, then item 1's, and so on.
  //   logit_rows: [r], each in [0, total new tokens)
  //   returns:    [r * vocab_size], row-major
  absl::StatusOr<std::vector<float>> Forward(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows);

  // Forward() without the copy: the logits stay on the backend (for device
  // sampling). Returns nullptr when there are no logit rows or no tokens;
  // the tensor [r, vocab] is valid until the next call.
  absl::StatusOr<const Tensor*> ForwardToDevice(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows);

  // Copy-on-write (StepPlan::block_copies): copies every KV cache tensor's
  // block src over block dst (every layer's K and V), in order, before a
  // step's forward pass. INVALID_ARGUMENT, copying nothing, when an id is
  // outside [0, num_blocks) or src == dst.
  absl::Status CopyBlocks(std::span<const BlockCopy> copies);

  Backend* backend() const { return backend_; }

 private:
  struct LayerTensors {
    Tensor input_norm;           // [hidden]
    Tensor q_proj;               // [q_dim, hidden]
    Tensor k_proj;               // [kv_dim, hidden]
    Tensor v_proj;               // [kv_dim, hidden]
    Tensor q_bias;               // [q_dim]; empty without attention_bias
    Tensor k_bias;               // [kv_dim]
    Tensor v_bias;               // [kv_dim]
    Tensor o_proj;               // [hidden, q_dim]
    Tensor post_attention_norm;  // [hidden]
    Tensor gate_proj;            // [intermediate, hidden]
    Tensor up_proj;              // [intermediate, hidden]
    Tensor down_proj;            // [hidden, intermediate]
    Tensor k_cache;  // [num_blocks, num_kv_heads, block_size, head_dim]
    Tensor v_cache;  // [num_blocks, num_kv_heads, block_size, head_dim]
  };

  // A reusable activation buffer that grows to the largest batch seen.
  struct Workspace {
    Tensor buffer;  // [capacity_rows, width]
    int64_t capacity_rows = 0;
  };

  LlamaModel(const ModelConfig& config, Backend* backend,
             const Options& options);

  // Every KV cache tensor the model owns (each layer's K and V), so that a
  // block operation reaches all of them. The one place that knows the cache
  // layout: were a cache to hold several physical blocks per scheduler block
  // (e.g. one per loop of a recursive model), this and CopyBlocks' id mapping
  // are what change.
  std::vector<Tensor*> KvCacheTensors();

  // The first `rows` rows of `workspace`, (re)allocated to fit.
  absl::StatusOr<Tensor> Rows(Workspace& workspace, int64_t rows,
                              int64_t width);

  ModelConfig config_;
  Backend* backend_;  // not owned
  Options options_;
  AttentionShape attention_;

  Tensor embed_tokens_;  // [vocab, hidden]
  Tensor final_norm_;    // [hidden]
  Tensor lm_head_;       // [vocab, hidden]; empty when tied to embed_tokens_
  Tensor rope_table_;    // [max_position_embeddings, head_dim]
  std::vector<LayerTensors> layers_;

  // Activations, [num_tokens, width] each.
  Workspace x_, normed_, q_, k_, v_, attn_, proj_, gate_, up_;
  // Final rows and their logits, [num_logit_rows, hidden|vocab].
  Workspace selected_, logits_;
  Tensor logits_view_;  // [r, vocab] view into logits_ from the last call
};

}  // namespace strata

#endif  // STRATA_ENGINE_LLAMA_MODEL_H_
