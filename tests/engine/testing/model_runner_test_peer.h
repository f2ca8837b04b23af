// Test-only access to ModelRunner and LlamaModel internals: the logits a
// step sampled from, the logits of every new token, and the K/V cache
// contents. Production code has one entry point (ModelRunner::Execute ->
// LlamaModel::Step); tests compare against reference logits and K/V, which
// they reach here instead of through public test hooks.
#ifndef STRATA_TESTS_ENGINE_TESTING_MODEL_RUNNER_TEST_PEER_H_
#define STRATA_TESTS_ENGINE_TESTING_MODEL_RUNNER_TEST_PEER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/llama_model.h"
#include "engine/model_runner.h"
#include "engine/step.h"

namespace strata {

class LlamaModelTestPeer {
 public:
  explicit LlamaModelTestPeer(LlamaModel& model) : model_(model) {}

  // The forward pass over `items`, returning the logits of `logit_rows`
  // (flattened new tokens). [logit_rows.size() * vocab]
  absl::StatusOr<std::vector<float>> Forward(
      std::span<const WorkItem> items, std::span<const int32_t> logit_rows) {
    return model_.Forward(items, logit_rows);
  }

  // Whether every layer multiplies q/k/v and gate/up as one fused weight
  // each (LlamaModel::LayerTensors::qkv_proj, gate_up_proj).
  bool FusedProjections() const {
    for (const LlamaModel::LayerTensors& layer : model_.layers_) {
      if (layer.qkv_proj.empty() || layer.gate_up_proj.empty()) return false;
    }
    return true;
  }

 private:
  LlamaModel& model_;
};

class ModelRunnerTestPeer {
 public:
  explicit ModelRunnerTestPeer(ModelRunner& runner) : runner_(runner) {}

  // Execute() on the host that also returns, per item, the logits its token
  // was sampled from ([vocab]; empty when nothing was sampled).
  // [plan.items.size()][vocab or 0]
  absl::StatusOr<StepResult> ExecuteWithLogits(
      const StepPlan& plan, std::vector<std::vector<float>>* logits) {
    if (absl::Status status = runner_.model_->CopyBlocks(plan.block_copies);
        !status.ok()) {
      return status;
    }
    return runner_.Run(plan, logits);
  }

  // Runs the plan like Execute() (block copies, then writing K/V) but
  // returns the logits of every new token of every item, in plan order, and
  // samples nothing. [total_tokens][vocab]
  absl::StatusOr<std::vector<std::vector<float>>> ComputeAllLogits(
      const StepPlan& plan) {
    if (absl::Status status = runner_.model_->CopyBlocks(plan.block_copies);
        !status.ok()) {
      return status;
    }
    const int32_t n = plan.NumTokens();
    std::vector<int32_t> rows(n);
    for (int32_t i = 0; i < n; ++i) rows[i] = i;
    absl::StatusOr<std::vector<float>> logits =
        runner_.model_->Forward(plan.items, rows);
    if (!logits.ok()) return logits.status();
    const size_t vocab = static_cast<size_t>(runner_.config().vocab_size);
    std::vector<std::vector<float>> out(n);
    for (int32_t i = 0; i < n; ++i) {
      out[i].assign(logits->begin() + i * vocab,
                    logits->begin() + (i + 1) * vocab);
    }
    return out;
  }

  // K (after RoPE) and V at `position` of kv layer loop * num_hidden_layers
  // + layer, through `block_table`; each [num_kv_heads * head_dim] (f32
  // caches: the CPU backend).
  // Propagated K/V still pending is written first (LlamaModel::FinishStep).
  absl::Status ReadKv(int32_t kv_layer, std::span<const int32_t> block_table,
                      int32_t position, std::vector<float>* k,
                      std::vector<float>* v) {
    if (absl::Status status = runner_.model_->FinishStep(); !status.ok()) {
      return status;
    }
    return runner_.model_->kv_cache_.ReadKv(kv_layer, block_table, position, k,
                                            v);
  }

  // Whether propagated K/V waits for the next step, and writing it now.
  bool propagation_pending() const {
    return runner_.model_->propagation_pending_;
  }
  absl::Status FinishStep() { return runner_.model_->FinishStep(); }

 private:
  ModelRunner& runner_;
};

}  // namespace strata

#endif  // STRATA_TESTS_ENGINE_TESTING_MODEL_RUNNER_TEST_PEER_H_
