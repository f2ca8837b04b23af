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
//   K, V: [num_blocks, num_loops, num_kv_heads, block_size, head_dim]
// (num_loops = 1 for a plain model). The scheduler owns which blocks a
// sequence uses; the model only reads and writes through block tables.
//
// Recursive models (config num_loops N > 1; docs/recursive-models.md): the K
// layers run once per round over items at different loops (LoopPlanner),
// with per-loop LoRA and per-loop KV (block b of loop l is physical block
// b * N + l of the cache viewed as [num_blocks * N, ...]), early exits and
// their KV fill, and a HiddenStateStore carrying states between steps.
//
// Threading: not thread-safe; one engine thread calls Forward().
#ifndef STRATA_ENGINE_LLAMA_MODEL_H_
#define STRATA_ENGINE_LLAMA_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/exit_policy.h"
#include "engine/hidden_state_store.h"
#include "engine/loop_planner.h"
#include "engine/lora.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/step.h"

namespace strata {

class LlamaModel {
 public:
  struct Options {
    int32_t block_size = 16;  // tokens per KV block
    int32_t num_blocks = 0;   // KV blocks in the pool (>= 1)
    // Recursive models: K/V of the loops an early exit skipped.
    KvFillPolicy kv_fill = KvFillPolicy::kPropagate;
    // Recursive models: the exit classifier (ExitDefaults::classifier),
    // [num_loops - 1, hidden + 1] row-major; empty = none (a kClassifier
    // exit is then INVALID_ARGUMENT).
    std::vector<float> exit_classifier;
  };

  // What one item did in a step (recursive models; ItemResult's fields).
  struct ItemProgress {
    int32_t loops_done = 0;  // absolute: num_loops = all
    int32_t exit_loop = -1;  // < N-1 early exit, N-1 full depth, -1 unfinished
    std::optional<float> exit_confidence;  // at the last evaluated boundary
    bool needs_kv_fill = false;            // recompute exit: state kept
    int32_t logits_row = -1;  // its row of StepOutput::logits, or -1
  };

  struct StepOutput {
    std::vector<ItemProgress> items;  // parallel to the step's items
    // Logits of the last token of every sample item whose tokens finished
    // (exit or loop N-1), the exit loop's for early exits. [rows, vocab],
    // valid until the next call; nullptr when there are none.
    const Tensor* logits = nullptr;
    std::vector<int32_t> logit_items;  // item index of each logits row
  };

  // Uploads the weights (consumed, so a host backend adopts them without a
  // copy) and allocates the KV cache on `backend`, which must outlive the
  // model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      const ModelConfig& config, ModelWeights weights, Backend* backend,
      const Options& options);

  // Bytes one KV block takes: K and V of block_size tokens for every KV layer
  // (num_hidden_layers * num_loops), element_bytes per value (4 for f32
  // caches, 2 for f16/bf16).
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
  // Recursive items run their loop ranges (exits and state store included);
  // a row's logits are then those of the state it ends the step in.
  absl::StatusOr<const Tensor*> ForwardToDevice(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows);

  // The step the runner executes: the forward pass over every item (loop
  // ranges, early exits, KV fill, state store), returning each item's
  // progress and, on the backend, the logits to sample from: one row per
  // sample item whose tokens finished this step.
  absl::StatusOr<StepOutput> Step(std::span<const WorkItem> items);

  // Drops the kept hidden states of `request` (StepExecutor::ReleaseState).
  void ReleaseState(RequestId request) { store_.Release(request); }
  const HiddenStateStore& state_store() const { return store_; }

  // Test hook (f32 caches only): K (after RoPE) and V of kv layer
  // loop * K + layer at `position` of `block_table`, each
  // [num_kv_heads * head_dim] (kv head major).
  absl::Status ReadKvForTest(int32_t kv_layer,
                             std::span<const int32_t> block_table,
                             int32_t position, std::vector<float>* k,
                             std::vector<float>* v);

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
    // [num_blocks, num_loops, num_kv_heads, block_size, head_dim]
    Tensor k_cache;
    Tensor v_cache;
    // Views of the caches as attention sees them: physical block
    // b * num_loops + l. [num_blocks * num_loops, num_kv_heads, block_size,
    // head_dim]
    Tensor k_cache_view;
    Tensor v_cache_view;
  };

  // A reusable buffer of any [rows, width], grown to the largest seen.
  struct FlatWorkspace {
    Tensor buffer;  // [capacity]
    int64_t capacity = 0;
  };

  // A reusable activation buffer that grows to the largest batch seen.
  struct Workspace {
    Tensor buffer;  // [capacity_rows, width]
    int64_t capacity_rows = 0;
  };

  LlamaModel(const ModelConfig& config, Backend* backend,
             const Options& options);

  // Every KV cache tensor the model owns (each layer's K and V), so that a
  // block operation reaches all of them. Each is [num_blocks, num_loops,
  // ...]: row b along dimension 0 holds every loop's K/V of scheduler block
  // b, so copying a block copies all loops of a recursive model.
  std::vector<Tensor*> KvCacheTensors();

  // The first `rows` rows of `workspace`, (re)allocated to fit.
  absl::StatusOr<Tensor> Rows(Workspace& workspace, int64_t rows,
                              int64_t width);
  // A [rows, width] view of `workspace`, (re)allocated to fit.
  absl::StatusOr<Tensor> Scratch(FlatWorkspace& workspace, int64_t rows,
                                 int64_t width);

  // Checks of the recursive fields (loop range, exit, kv_fill, kept states,
  // items of one request), after the plain checks of Validate.
  absl::Status ValidateLoops(std::span<const WorkItem> items) const;
  // The step: rounds over the items, exits, KV fill, state store. Logits:
  // sample_mode: the finished sample items' (StepOutput::logits); else those
  // of `logit_rows` (flattened rows) at their end state, in `out->logits`.
  absl::Status RunStep(std::span<const WorkItem> items,
                       std::span<const int32_t> logit_rows, bool sample_mode,
                       StepOutput* out);
  // RunStep once; allow_graph: a decode step may be bracketed as a step
  // graph (Backend::BeginStepGraph). *rerun: the backend gave the graph up
  // and nothing ran; RunStep runs the step again without one.
  absl::Status RunStepOnce(std::span<const WorkItem> items,
                           std::span<const int32_t> logit_rows,
                           bool sample_mode, bool allow_graph, bool* rerun,
                           StepOutput* out);
  // The step-graph key of a step whose ops depend only on its shape (one
  // token per item, every loop, no exit or fill); nullopt otherwise.
  std::optional<StepGraphKey> GraphKeyOf(std::span<const WorkItem> items,
                                         std::span<const int32_t> logit_rows,
                                         bool sample_mode,
                                         int64_t num_rows) const;
  // The K layers over the round's rows x [round.num_rows, hidden] (in place).
  absl::Status RunBlock(const LoopPlanner::Round& round, Tensor* x);
  // out = x W^T plus, per segment, that loop's LoRA of (layer, proj).
  absl::Status Project(const Tensor& x, const Tensor& w, int32_t layer,
                       LoraProj proj, std::span<const LoopSegment> segments,
                       Tensor* out);
  // out = lm_head(RmsNorm(x)) for the rows `rows` of x. out: [rows, vocab]
  absl::Status Head(const Tensor& x, std::span<const int32_t> rows,
                    Tensor* out);
  // Propagate policy: K/V of the skipped loops of exited items from their
  // exit states (state: the step's state buffer).
  absl::Status PropagateKv(const LoopPlanner& planner,
                           std::span<const int32_t> exited,
                           std::span<const int32_t> exit_loops,
                           const Tensor& state);

  ModelConfig config_;
  Backend* backend_;  // not owned
  Options options_;
  AttentionShape attention_;

  Tensor embed_tokens_;  // [vocab, hidden]
  Tensor final_norm_;    // [hidden]
  Tensor lm_head_;       // [vocab, hidden]; empty when tied to embed_tokens_
  Tensor rope_table_;    // [max_position_embeddings, head_dim]
  Tensor exit_classifier_;  // [num_loops - 1, hidden + 1]; empty: none
  std::vector<LayerTensors> layers_;
  // Recursive models with LoRA: (loop l, layer k) at l * K + k.
  std::vector<LayerLoraTensors> lora_;
  HiddenStateStore store_;

  // Activations, [num_tokens, width] each.
  Workspace x_, normed_, q_, k_, v_, attn_, proj_, gate_, up_;
  // Final rows and their logits, [num_logit_rows, hidden|vocab].
  Workspace selected_, logits_;
  Tensor logits_view_;  // [r, vocab] view into logits_ from the last call
  // Recursive models: the second state buffer (row reorders), LoRA
  // intermediates, exit checks and propagated KV.
  Workspace x2_, exit_logits_, exit_prev_, fill_state_, fill_normed_,
      fill_rows_, fill_k_, fill_v_, lora_t_;
  FlatWorkspace lora_u_;  // [rows, out_features of the projection]
  // Project()'s segments for Backend::AddLowRank, kept to reuse its memory.
  std::vector<LowRankSegment> low_rank_segments_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LLAMA_MODEL_H_
