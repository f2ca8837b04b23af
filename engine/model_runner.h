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
    // "cpu" is the only backend built today; anything else is refused
    // (INVALID_ARGUMENT for unknown names, FAILED_PRECONDITION for "cuda"
    // when it is not built in).
    std::string backend = "cpu";
    // Memory budget for the paged KV cache; sizes the block pool.
    int64_t kv_cache_bytes = 256LL << 20;
    // Tokens per KV block.
    int32_t block_size = 16;
    // Kernel worker threads; 0 = hardware concurrency.
    int32_t num_threads = 0;
  };

  // Loads config.json and the weights (loader errors pass through, naming the
  // file), uploads the weights to the backend and allocates the KV pool.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const Options& options);

  ~ModelRunner() override;
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const ModelConfig& config() const { return config_; }

  // Runs the forward pass for every item and samples (engine/sampler.h) for
  // items with sample = true. An invalid plan (block id out of range, block
  // table too short, position past max_position_embeddings, token id outside
  // the vocabulary) returns INVALID_ARGUMENT and leaves the runner usable.
  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override;

  int32_t block_size() const override { return block_size_; }
  int32_t num_blocks() const override { return num_blocks_; }

  // Test hook: runs the plan like Execute() (writing K/V) but returns the
  // logits of every new token of every item, in plan order, and samples
  // nothing. [total_tokens][vocab]
  absl::StatusOr<std::vector<std::vector<float>>> ComputeAllLogits(
      const StepPlan& plan);

 private:
  ModelRunner(ModelConfig config, std::unique_ptr<Backend> backend,
              std::unique_ptr<LlamaModel> model, int32_t block_size,
              int32_t num_blocks);

  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  int32_t block_size_;
  int32_t num_blocks_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_MODEL_RUNNER_H_
