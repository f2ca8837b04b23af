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
// The KV cache (a PagedKvCache, engine/kv_cache/, sized by
// Options::num_blocks) holds every layer's K/V; the scheduler owns which
// blocks a sequence uses; the model only reads and writes through block
// tables.
//
// Recursive models (config num_loops N > 1; docs/recursive-models.md): the K
// layers run once per round over items at different loops (LoopPlanner),
// with per-loop LoRA and per-loop KV (block b of loop l is physical block
// b * N + l of the cache viewed as [num_blocks * N, ...]), early exits and
// their KV fill, and a HiddenStateStore carrying states between steps.
//
// Threading: not thread-safe; one engine thread calls Step().
#ifndef STRATA_ENGINE_LLAMA_MODEL_H_
#define STRATA_ENGINE_LLAMA_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/exit_checks.h"
#include "engine/exit_policy.h"
#include "engine/kv_cache/hidden_state_store.h"
#include "engine/kv_cache/paged_kv_cache.h"
#include "engine/loader/model_config.h"
#include "engine/loader/model_weights.h"
#include "engine/loop_planner.h"
#include "engine/lora.h"
#include "engine/step.h"
#include "engine/step_timings.h"

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
    std::vector<float> exit_classifier = {};
    // Fuse q/k/v and gate/up into one weight each where the backend can
    // (LayerTensors::qkv_proj); off only to compare the two in tests.
    bool fuse_projections = true;
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

  // The step the runner executes: the forward pass over every item (loop
  // ranges, early exits, KV fill, state store), returning each item's
  // progress and, on the backend, the logits to sample from: one row per
  // sample item whose tokens finished this step.
  //
  // The K/V that early exits' skipped loops take from their exit states
  // (the propagate policy) is written after the step, in one of two ways:
  // - Steps of several items: a host task beside the caller's sampling (on
  //   the CPU, a pool worker: Backend::StartHostTask), still running when
  //   Step returns. JoinPropagation() waits for it and returns its error;
  //   call it before anything reads or frees the step's blocks.
  // - A step of one item: the next step's first round, whose norm, K/V
  //   products, LoRA, RoPE and K/V write take those rows with the round's
  //   own, instead of a dozen ops of their own. Nothing reads a skipped
  //   loop's K/V before then: the request's next token starts at loop 0,
  //   and rows at later loops read the cache after the first round's
  //   writes.
  // FinishStep() joins the task and writes pending K/V now (the same bits),
  // for whatever reads or copies blocks outside a step: block copies, test
  // peers, and the release of a request whose blocks the scheduler frees.
  // Every other call into the model runs it first.
  absl::StatusOr<StepOutput> Step(std::span<const WorkItem> items);
  // The same into *out, whose vectors keep their memory across steps (the
  // runner's; a step then allocates nothing for its output).
  absl::Status Step(std::span<const WorkItem> items, StepOutput* out);
  absl::Status JoinPropagation();
  absl::Status FinishStep();

  // Drops the kept hidden states of `request` (StepExecutor::ReleaseState),
  // writing pending propagated K/V first if some is the request's: its
  // blocks may have gone to another request or into the prefix cache.
  void ReleaseState(RequestId request);
  const HiddenStateStore& state_store() const { return store_; }

  // Copy-on-write (StepPlan::block_copies), before a step's forward pass
  // (PagedKvCache::CopyBlocks).
  // Pending propagated K/V is written first: a copy takes every loop.
  absl::Status CopyBlocks(std::span<const BlockCopy> copies) {
    if (copies.empty()) return absl::OkStatus();
    if (absl::Status status = FinishStep(); !status.ok()) return status;
    return kv_cache_.CopyBlocks(copies);
  }

  Backend* backend() const { return backend_; }

  // Where the steps so far spent their time (engine/step_timings.h; the
  // sampling part is ModelRunner's).
  const StepTimings& step_timings() const { return timings_; }

 private:
  // Tests reach the forward pass of arbitrary rows and the cache contents
  // through their peers (tests/engine/testing/), not public methods.
  friend class LlamaModelTestPeer;
  friend class ModelRunnerTestPeer;

  struct LayerTensors {
    Tensor input_norm;  // [hidden]
    // q, k and v's rows in one weight, [q_dim + 2 kv_dim, hidden], where the
    // backend slices weights (Backend::WeightRowAlignment); q/k/v_proj are
    // then its slices. Empty otherwise.
    Tensor qkv_proj;
    Tensor kv_proj;  // its k and v rows, [2 kv_dim, hidden] (propagated K/V)
    Tensor q_proj;               // [q_dim, hidden]
    Tensor k_proj;               // [kv_dim, hidden]
    Tensor v_proj;               // [kv_dim, hidden]
    Tensor q_bias;               // [q_dim]; empty without attention_bias
    Tensor k_bias;               // [kv_dim]
    Tensor v_bias;               // [kv_dim]
    Tensor o_proj;               // [hidden, q_dim]
    Tensor post_attention_norm;  // [hidden]
    // gate's and up's rows in one weight, [2 intermediate, hidden], like
    // qkv_proj; empty otherwise.
    Tensor gate_up_proj;
    Tensor gate_proj;            // [intermediate, hidden]
    Tensor up_proj;              // [intermediate, hidden]
    Tensor down_proj;            // [hidden, intermediate]
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

  // The first `rows` rows of `workspace`, (re)allocated to fit.
  absl::StatusOr<Tensor> Rows(Workspace& workspace, int64_t rows,
                              int64_t width);
  // A [rows, width] view of `workspace`, (re)allocated to fit.
  absl::StatusOr<Tensor> Scratch(FlatWorkspace& workspace, int64_t rows,
                                 int64_t width);

  // The forward pass over every item (writing their K/V into the cache),
  // returning the logits of the requested rows (flattened new tokens: item
  // 0's first, then item 1's...) at the state each row ends the step in.
  // Step() is the production path; these serve the test peers.
  //   logit_rows: [r], each in [0, total new tokens); returns [r * vocab]
  absl::StatusOr<std::vector<float>> Forward(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows);
  // Forward() with the logits left on the backend ([r, vocab], valid until
  // the next call; nullptr when there are none).
  absl::StatusOr<const Tensor*> ForwardToDevice(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows);

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
  // With merge_propagation, the pending propagated K/V rows join the K/V
  // products and writes of every layer (see Step()).
  absl::Status RunBlock(const LoopPlanner::Round& round, Tensor* x,
                        bool merge_propagation = false);
  // out = x W^T plus, per segment, that loop's LoRA of (layer, proj).
  absl::Status Project(const Tensor& x, const Tensor& w, int32_t layer,
                       LoraProj proj, std::span<const LoopSegment> segments,
                       Tensor* out);
  // out += per segment, that loop's LoRA of (layer, proj) of x (nothing
  // without LoRA).
  absl::Status AddLora(const Tensor& x, int32_t layer, LoraProj proj,
                       std::span<const LoopSegment> segments, Tensor* out);
  // AddLora for each of projs (one input: q/k/v or gate/up) into outs, with
  // one A-product per segment from the stacked A where the backend can
  // (Backend::AddLowRankGroup; the same values).
  absl::Status AddLoraGroup(const Tensor& x, int32_t layer,
                            std::span<const LoraProj> projs,
                            Tensor LayerLoraTensors::*stacked,
                            std::span<const LoopSegment> segments,
                            std::span<Tensor* const> outs);
  // out = lm_head(RmsNorm(x)) for the rows `rows` of x. out: [rows, vocab]
  absl::Status Head(const Tensor& x, std::span<const int32_t> rows,
                    Tensor* out);
  // out = lm_head(RmsNorm(states)), the norm in place. out: [rows, vocab]
  void HeadOfStates(Tensor states, Tensor* out);
  // [begin, begin + count), in iota_: valid until the next call.
  std::span<const int32_t> Iota(int32_t begin, int32_t count);

  // Propagate policy: K/V of the skipped loops of exited items from their
  // exit states (state: the step's state buffer). Plans one row per (item,
  // skipped loop) and copies its exit state, for RunStep to hand to a host
  // task or to the next step's first round (RunBlock).
  absl::Status PlanPropagation(std::span<const WorkItem> items,
                               const LoopPlanner& planner,
                               std::span<const int32_t> exited,
                               std::span<const int32_t> exit_loops,
                               const Tensor& state);
  // Writes the planned propagated K/V with ops of its own (the host task or
  // FinishStep()).
  absl::Status PropagateKv();

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
  PagedKvCache kv_cache_;
  // Recursive models with LoRA: (loop l, layer k) at l * K + k.
  std::vector<LayerLoraTensors> lora_;
  HiddenStateStore store_;

  // Activations, [num_tokens, width] each.
  Workspace x_, normed_, q_, k_, v_, attn_, proj_, gate_, up_;
  // The fused products before SplitColumns (LayerTensors::qkv_proj,
  // gate_up_proj).
  Workspace qkv_, gate_up_;
  // Final rows and their logits, [num_logit_rows, hidden|vocab]; in sample
  // mode the finished rows' states wait in finished_ for one head per step.
  Workspace selected_, logits_, finished_;
  Tensor logits_view_;  // [r, vocab] view into logits_ from the last call
  // Recursive models: the second state buffer (row reorders), LoRA
  // intermediates, exit checks and propagated KV.
  Workspace x2_, exit_logits_, exit_prev_, fill_state_, fill_rows_, fill_k_,
      fill_v_, fill_kv_, lora_t_;
  FlatWorkspace lora_u_;  // [rows, out_features of the projection]
  // Project()'s segments for Backend::AddLowRank, kept to reuse its memory.
  std::vector<LowRankSegment> low_rank_segments_;
  std::vector<LowRankGroupSegment> low_rank_groups_;  // AddLoraGroup()'s
  // A round's rows followed by the pending propagated rows (RunBlock).
  std::vector<LoopSegment> merged_segments_;
  std::vector<int32_t> merged_positions_, merged_slots_;
  // RunStepOnce's bookkeeping, kept so that a step allocates nothing once
  // its sizes have been seen (a recursive model's per-loop steps run 1.5-3
  // times as many steps as tokens): the planner and its round, the exit
  // checks, the embedded ids, the early exits and their loops, and the
  // rows gathered for the LM head.
  LoopPlanner planner_;
  LoopPlanner::Round round_;
  ExitChecks checks_;
  std::vector<TokenId> step_ids_;
  std::vector<int32_t> exited_, exit_loops_, head_rows_;
  std::vector<int32_t> iota_;  // Iota()'s
  StepTimings timings_;

  // The planned propagated K/V (PlanPropagation), kept to reuse its memory;
  // the host task owns it while propagation_running_.
  struct Propagation {
    // Per (exited item, skipped loop) pair, grouped by loop (segments, whose
    // first_row counts from the first pair): its request, position, K/V
    // slot, and exit state h [pairs, hidden].
    std::vector<RequestId> pair_request;
    std::vector<int32_t> pair_pos, pair_slot;
    std::vector<int32_t> state_rows;  // the exit states' rows in the step
    std::vector<LoopSegment> segments;
    // Every exited token skips the last loop, so the last segment holds
    // each token once. For each pair before it: its token's row in the last
    // segment, whose normed state and base K/V it shares (PropagateKv).
    std::vector<int32_t> last_row;
    Tensor h;
    // PropagateKv()'s: the normed states, K, V (and both, fused).
    Tensor f, k, v, kv;
    int64_t num_pairs() const { return static_cast<int64_t>(pair_pos.size()); }
  };
  Propagation propagation_;
  bool propagation_planned_ = false;  // by the step running
  bool propagation_running_ = false;  // the host task, not yet joined
  bool propagation_pending_ = false;  // for the next step's first round
  absl::Status propagation_status_;   // written by the host task
};

}  // namespace strata

#endif  // STRATA_ENGINE_LLAMA_MODEL_H_
