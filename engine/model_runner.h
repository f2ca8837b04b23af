// ModelRunner: the engine's StepExecutor. Owns the model config, the backend,
// the weights uploaded to it, and the paged KV cache; runs one StepPlan per
// call (forward pass over every item as one batch, then sampling).
//
// Threading: not thread-safe. One engine thread calls Execute() (see
// DESIGN.md); the kernels use an internal thread pool of num_threads workers.
#ifndef STRATA_ENGINE_MODEL_RUNNER_H_
#define STRATA_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend_options.h"
#include "engine/exit_policy.h"
#include "engine/llama_model.h"
#include "engine/loader/model_config.h"
#include "engine/step.h"
#include "engine/step_timings.h"

namespace strata {

class Backend;

class ModelRunner : public StepExecutor {
 public:
  struct Options {
    // Folder holding config.json and the safetensors weights.
    std::string model_dir;
    // Which backend and how (parsed once at the daemon's edge); the
    // registry creates it (engine/backends/backend_registry.h).
    BackendOptions backend;
    // Memory budget for the paged KV cache; sizes the block pool (a device
    // backend may size it from its memory instead:
    // Backend::KvCacheBudgetBytes).
    int64_t kv_cache_bytes = 256LL << 20;
    // Tokens per KV block.
    int32_t block_size = 16;
    // Recursive models: K/V of the loops an early exit skipped (see
    // KvFillPolicy and WorkItem::kv_fill).
    KvFillPolicy kv_fill = KvFillPolicy::kPropagate;
    // LlamaModel::Options::fuse_projections (off only in tests).
    bool fuse_projections = true;
  };

  // Loads config.json and the weights (loader errors pass through, naming the
  // file), uploads the weights to the backend and allocates the KV pool.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const Options& options);

  ~ModelRunner() override;
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const ModelConfig& config() const { return config_; }

  // Runs the plan's block copies (copy-on-write), then the forward pass for
  // every item, and samples (engine/sampler.h) for items with sample = true. An
  // invalid plan (block id out of range, block table too short, position past
  // max_position_embeddings, token id outside the vocabulary) returns
  // INVALID_ARGUMENT and leaves the runner usable.
  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override;

  int32_t block_size() const override { return block_size_; }
  int32_t num_blocks() const override { return num_blocks_; }

  // The backend the steps run on (tests and benchmarks read its counters).
  Backend& backend() { return *backend_; }

  // Drops the hidden states kept for `request` (recursive models).
  void ReleaseState(RequestId request) override;
  // Backend::StartHostTask / WaitHostTask: on the CPU a kernel worker.
  void StartBeside(absl::AnyInvocable<void()> task) override;
  void WaitBeside() override;
  // Hidden states kept between steps (recursive models; 0 otherwise).
  size_t num_kept_states() const;
  // Where the steps so far spent their time (engine/step_timings.h).
  StepTimings step_timings() const;

 private:
  // Tests reach the logits and the cache through their peer
  // (tests/engine/testing/model_runner_test_peer.h).
  friend class ModelRunnerTestPeer;

  ModelRunner(ModelConfig config, std::unique_ptr<Backend> backend,
              std::unique_ptr<LlamaModel> model, int32_t block_size,
              int32_t num_blocks);

  // Execute() after the block copies; fills sampled_logits (test hook)
  // when not null, sampling on the host then.
  absl::StatusOr<StepResult> Run(
      const StepPlan& plan, std::vector<std::vector<float>>* sampled_logits);

  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  int32_t block_size_;
  int32_t num_blocks_;
  StepTimings::Part sampling_;  // StepTimings::sampling
  // The step's output and its logits on the host (for a backend without
  // HostView), kept to reuse their memory.
  LlamaModel::StepOutput step_output_;
  std::vector<float> host_logits_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_MODEL_RUNNER_H_
