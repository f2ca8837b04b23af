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
#include "engine/model_config.h"
#include "engine/step.h"

namespace strata {

class Backend;
class LlamaModel;

class ModelRunner : public StepExecutor {
 public:
  struct Options {
    // Folder holding config.json and the safetensors weights.
    std::string model_dir;
    // "cpu" or "cuda" (INVALID_ARGUMENT for unknown names;
    // FAILED_PRECONDITION "no CUDA device" for "cuda" when CUDA is not built
    // in or no GPU is visible).
    std::string backend = "cpu";
    // Memory budget for the paged KV cache; sizes the block pool. On "cuda"
    // it is used only when gpu_memory_fraction is 0.
    int64_t kv_cache_bytes = 256LL << 20;

    // ---- "cuda" only (ignored by "cpu", whose weights stay f32) ----
    // Weight and KV cache type: "bf16" or "f16".
    std::string dtype = "bf16";
    // Linear-layer weights: "none" (dtype), "int8" (weight-only int8,
    // per-channel scales) or "llm.int8" (LLM.int8() mixed precision).
    std::string quantization = "none";
    // LLM.int8() outlier threshold on |activation|.
    float llm_int8_threshold = 6.0f;
    // > 0: the KV pool takes this fraction of the GPU's memory minus what is
    // in use after loading the weights and a workspace reserve.
    double gpu_memory_fraction = 0.0;
    // CUDA device ordinal.
    int32_t device = 0;
    // Decode steps recorded and replayed as CUDA graphs
    // (CudaBackend::Options::step_graphs).
    bool cuda_graphs = false;
    // Tokens per KV block.
    int32_t block_size = 16;
    // Kernel worker threads; 0 = hardware concurrency.
    int32_t num_threads = 0;
    // Recursive models: K/V of the loops an early exit skipped, "propagate"
    // (computed from the exit state in the same step) or "recompute" (the
    // scheduler sends kv_fill items; see WorkItem::kv_fill).
    std::string kv_fill = "propagate";
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

  // Test hook: Execute() on the host that also returns, per item, the
  // logits its token was sampled from ([vocab]; empty when nothing was
  // sampled). [plan.items.size()][vocab or 0]
  absl::StatusOr<StepResult> ExecuteWithLogitsForTest(
      const StepPlan& plan, std::vector<std::vector<float>>* logits);

  // The backend the steps run on (tests and benchmarks read its counters).
  Backend& backend() { return *backend_; }

  // Drops the hidden states kept for `request` (recursive models).
  void ReleaseState(RequestId request) override;
  // Hidden states kept between steps (recursive models; 0 otherwise).
  size_t num_kept_states() const;

  // Test hook (CPU): K (after RoPE) and V at `position` of kv layer
  // loop * num_hidden_layers + layer, through `block_table`; each
  // [num_kv_heads * head_dim].
  absl::Status ReadKvForTest(int32_t kv_layer,
                             std::span<const int32_t> block_table,
                             int32_t position, std::vector<float>* k,
                             std::vector<float>* v);

  // Test hook: runs the plan like Execute() (block copies, then writing K/V)
  // but returns the logits of every new token of every item, in plan order,
  // and samples nothing. [total_tokens][vocab]
  absl::StatusOr<std::vector<std::vector<float>>> ComputeAllLogits(
      const StepPlan& plan);

 private:
  ModelRunner(ModelConfig config, std::unique_ptr<Backend> backend,
              std::unique_ptr<LlamaModel> model, int32_t block_size,
              int32_t num_blocks);

  // Creates the backend named by options (nullptr result never returned).
  static absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
      const Options& options);
  // Execute() after the block copies; fills sampled_logits (test hook)
  // when not null, sampling on the host then.
  absl::StatusOr<StepResult> Run(
      const StepPlan& plan, std::vector<std::vector<float>>* sampled_logits);

  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  int32_t block_size_;
  int32_t num_blocks_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_MODEL_RUNNER_H_
