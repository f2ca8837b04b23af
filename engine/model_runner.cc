#include "engine/model_runner.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backends/backend.h"
#include "engine/backends/backend_registry.h"
#include "engine/exit_defaults.h"
#include "engine/exit_policy.h"
#include "engine/kv_cache/paged_kv_cache.h"
#include "engine/llama_model.h"
#include "engine/loader/checkpoint.h"
#include "engine/loader/model_config.h"
#include "engine/loader/model_weights.h"
#include "engine/sampler.h"

namespace strata {

namespace {

// The step's results and sampled tokens: ModelRunner::Run's second half,
// which runs while the model may still write the step's propagated K/V.
// sampling: StepTimings::sampling, for host sampling. host_logits: where
// the logits are copied when the backend has no HostView of them.
absl::StatusOr<StepResult> SampleStep(
    Backend& backend, int32_t vocab_size, const StepPlan& plan,
    const LlamaModel::StepOutput& step, bool device_sampling,
    std::vector<std::vector<float>>* sampled_logits,
    std::vector<float>* host_logits, StepTimings::Part* sampling) {
  StepResult result;
  result.items.resize(plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const LlamaModel::ItemProgress& progress = step.items[i];
    ItemResult& out = result.items[i];
    out.request_id = plan.items[i].request_id;
    out.loops_done = progress.loops_done;
    out.exit_loop = progress.exit_loop;
    out.exit_confidence = progress.exit_confidence;
    out.needs_kv_fill = progress.needs_kv_fill;
  }
  if (step.logits == nullptr) return result;

  const std::vector<int32_t>& logit_items = step.logit_items;
  if (device_sampling) {
    std::vector<SampleRow> sample_rows;
    sample_rows.reserve(logit_items.size());
    for (int32_t i : logit_items) {
      const WorkItem& item = plan.items[i];
      sample_rows.push_back(
          {item.sampling, item.prompt_tokens, item.output_tokens});
    }
    absl::StatusOr<std::vector<SampledToken>> sampled =
        backend.Sample(*step.logits, sample_rows);
    if (!sampled.ok()) return sampled.status();
    for (size_t j = 0; j < logit_items.size() && j < sampled->size(); ++j) {
      result.items[logit_items[j]].sampled = std::move((*sampled)[j]);
    }
    return result;
  }
  const auto sampling_start = std::chrono::steady_clock::now();
  const size_t vocab = static_cast<size_t>(vocab_size);
  std::span<const float> logits = backend.HostView(*step.logits);
  if (logits.size() != logit_items.size() * vocab) {
    host_logits->resize(logit_items.size() * vocab);
    if (absl::Status status = backend.CopyToHost(*step.logits, *host_logits);
        !status.ok()) {
      return status;
    }
    logits = *host_logits;
  }
  for (size_t j = 0; j < logit_items.size(); ++j) {
    const WorkItem& item = plan.items[logit_items[j]];
    const std::span<const float> row_logits(logits.data() + j * vocab, vocab);
    if (sampled_logits != nullptr) {
      (*sampled_logits)[logit_items[j]].assign(row_logits.begin(),
                                               row_logits.end());
    }
    result.items[logit_items[j]].sampled =
        Sampler::Sample(backend, row_logits, *item.sampling, item.prompt_tokens,
                        item.output_tokens);
  }
  *sampling += {StepTimings::NanosecondsSince(sampling_start),
                static_cast<int64_t>(logit_items.size())};
  return result;
}

}  // namespace

ModelRunner::ModelRunner(ModelConfig config, std::unique_ptr<Backend> backend,
                         std::unique_ptr<LlamaModel> model, int32_t block_size,
                         int32_t num_blocks)
    : config_(std::move(config)),
      backend_(std::move(backend)),
      model_(std::move(model)),
      block_size_(block_size),
      num_blocks_(num_blocks) {}

// Members go in reverse order: the model (its tensors, and the wait for its
// last host task) before the backend that allocated and runs them.
ModelRunner::~ModelRunner() = default;

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const Options& options) {
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be positive, got ", options.block_size));
  }
  if (options.backend.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_threads must be >= 0, got ", options.backend.num_threads));
  }

  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(options.model_dir + "/config.json");
  if (!config.ok()) return config.status();

  // The backend first: asking for "cuda" without a GPU fails fast, before
  // the weights are read.
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend(options.backend);
  if (!backend.ok()) return backend.status();

  const int64_t block_bytes = PagedKvCache::BytesPerBlock(
      *config, options.block_size,
      static_cast<int64_t>(ElementSize((*backend)->kv_cache_type())));
  absl::StatusOr<int64_t> kv_budget =
      (*backend)->KvCacheBudgetBytes(*config, options.kv_cache_bytes);
  if (!kv_budget.ok()) return kv_budget.status();
  const int64_t blocks = *kv_budget / block_bytes;
  if (blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_bytes (", *kv_budget,
                     ", or the GPU memory fraction's budget) is smaller than "
                     "one KV block (",
                     block_bytes, " bytes)"));
  }
  const int32_t num_blocks = static_cast<int32_t>(
      std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max()));

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(options.model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(**checkpoint, *config);
  if (!weights.ok()) return weights.status();
  checkpoint->reset();  // unmap the files; the weights are in memory now

  LlamaModel::Options model_options;
  model_options.block_size = options.block_size;
  model_options.num_blocks = num_blocks;
  model_options.kv_fill = options.kv_fill;
  model_options.fuse_projections = options.fuse_projections;
  if (config->num_loops > 1) {
    absl::StatusOr<ExitDefaults> exit_defaults =
        LoadExitDefaults(options.model_dir, *config);
    if (!exit_defaults.ok()) return exit_defaults.status();
    model_options.exit_classifier = std::move(exit_defaults->classifier);
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Create(
      *config, std::move(*weights), backend->get(), model_options);
  if (!model.ok()) return model.status();

  return std::unique_ptr<ModelRunner>(
      new ModelRunner(*std::move(config), *std::move(backend),
                      *std::move(model), options.block_size, num_blocks));
}

absl::StatusOr<StepResult> ModelRunner::Execute(const StepPlan& plan) {
  // Copy-on-write first: the forward pass may write into the copies' dst.
  if (absl::Status status = model_->CopyBlocks(plan.block_copies);
      !status.ok()) {
    return status;
  }
  return Run(plan, nullptr);
}

absl::StatusOr<StepResult> ModelRunner::Run(
    const StepPlan& plan, std::vector<std::vector<float>>* sampled_logits) {
  if (sampled_logits != nullptr) sampled_logits->assign(plan.items.size(), {});
  // Device sampling unless some item wants top logprobs (host only) or the
  // test hook wants the logits.
  bool device_sampling =
      backend_->SupportsSampling() && sampled_logits == nullptr;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const WorkItem& item = plan.items[i];
    if (!item.sample) continue;
    if (item.sampling == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("work item ", i, " (request ", item.request_id,
                       ") asks to sample without sampling parameters"));
    }
    if (item.sampling->num_top_logprobs > 0) device_sampling = false;
  }
  // The forward pass; logits come back for the sample items whose tokens
  // finished (all of them for a plain model).
  LlamaModel::StepOutput* step = &step_output_;
  if (absl::Status status = model_->Step(plan.items, step); !status.ok()) {
    return status;
  }
  // The step's propagated K/V is written beside the sampling or by the next
  // step (LlamaModel::Step): the scheduler may free or reuse its blocks once
  // the result is back, and ReleaseState writes what waits first.
  absl::StatusOr<StepResult> result =
      SampleStep(*backend_, config_.vocab_size, plan, *step, device_sampling,
                 sampled_logits, &host_logits_, &sampling_);
  absl::Status joined = model_->JoinPropagation();
  if (!result.ok()) return result.status();
  if (!joined.ok()) return joined;
  return result;
}

void ModelRunner::ReleaseState(RequestId request) {
  model_->ReleaseState(request);
}

// Between steps the model's own host task has been joined (Execute), so the
// backend's one slot is free; a step that starts its own task waits for
// this one first (Backend::StartHostTask).
void ModelRunner::StartBeside(absl::AnyInvocable<void()> task) {
  backend_->StartHostTask(std::move(task));
}

void ModelRunner::WaitBeside() { backend_->WaitHostTask(); }

size_t ModelRunner::num_kept_states() const {
  return model_->state_store().size();
}

StepTimings ModelRunner::step_timings() const {
  StepTimings timings = model_->step_timings();
  timings.sampling = sampling_;
  return timings;
}

}  // namespace strata
