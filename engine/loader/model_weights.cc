#include "engine/loader/model_weights.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {

// One tensor to load: its checkpoint name, the shape config.json implies,
// and where it goes.
struct LoadJob {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float>* dest;
  size_t num_elements() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

bool IsFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// Threads converting tensors. Conversion is memory-bound; two threads are
// enough to saturate it on typical hosts.
constexpr int kNumLoadThreads = 2;

}  // namespace

absl::StatusOr<ModelWeights> ModelWeights::Load(const Checkpoint& checkpoint,
                                                const ModelConfig& config) {
  const int64_t vocab = config.vocab_size;
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim =
      static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t kv_dim =
      static_cast<int64_t>(config.num_key_value_heads) * config.head_dim;

  ModelWeights weights;
  weights.layers.resize(config.num_hidden_layers);
  std::vector<LoadJob> jobs;
  jobs.push_back(
      {"model.embed_tokens.weight", {vocab, hidden}, &weights.embed_tokens});
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    LayerWeights& layer = weights.layers[i];
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    const std::string attn = prefix + "self_attn.";
    jobs.push_back(
        {prefix + "input_layernorm.weight", {hidden}, &layer.input_norm});
    jobs.push_back({attn + "q_proj.weight", {q_dim, hidden}, &layer.q_proj});
    jobs.push_back({attn + "k_proj.weight", {kv_dim, hidden}, &layer.k_proj});
    jobs.push_back({attn + "v_proj.weight", {kv_dim, hidden}, &layer.v_proj});
    if (config.attention_bias) {
      jobs.push_back({attn + "q_proj.bias", {q_dim}, &layer.q_bias});
      jobs.push_back({attn + "k_proj.bias", {kv_dim}, &layer.k_bias});
      jobs.push_back({attn + "v_proj.bias", {kv_dim}, &layer.v_bias});
    } else {
      // Silently dropping biases would produce a subtly wrong model.
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        const std::string bias = absl::StrCat(attn, proj, ".bias");
        if (const TensorView* view = checkpoint.Find(bias); view != nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              view->file, ": tensor '", bias, "' (file offset ",
              view->file_offset,
              ") is present but config.json has attention_bias false"));
        }
      }
    }
    if (const TensorView* view = checkpoint.Find(attn + "o_proj.bias");
        view != nullptr) {
      return absl::UnimplementedError(absl::StrCat(
          view->file, ": tensor '", attn, "o_proj.bias' (file offset ",
          view->file_offset, ") is not supported (no o_proj bias)"));
    }
    jobs.push_back({attn + "o_proj.weight", {hidden, q_dim}, &layer.o_proj});
    jobs.push_back({prefix + "post_attention_layernorm.weight",
                    {hidden},
                    &layer.post_attention_norm});
    jobs.push_back(
        {prefix + "mlp.gate_proj.weight", {inter, hidden}, &layer.gate_proj});
    jobs.push_back(
        {prefix + "mlp.up_proj.weight", {inter, hidden}, &layer.up_proj});
    jobs.push_back(
        {prefix + "mlp.down_proj.weight", {hidden, inter}, &layer.down_proj});
  }
  jobs.push_back({"model.norm.weight", {hidden}, &weights.final_norm});
  // With tied embeddings the LM head is embed_tokens; a stored lm_head.weight
  // is ignored, as transformers does.
  if (!config.tie_word_embeddings) {
    jobs.push_back({"lm_head.weight", {vocab, hidden}, &weights.lm_head});
  }
  // Recursive models: the LoRA of every (loop, layer, projection).
  if (config.lora_rank > 0) {
    const int64_t rank = config.lora_rank;
    weights.lora.resize(static_cast<size_t>(config.num_loops) *
                        config.num_hidden_layers);
    for (int32_t l = 0; l < config.num_loops; ++l) {
      for (int32_t k = 0; k < config.num_hidden_layers; ++k) {
        LayerLoraWeights& lora =
            weights.lora[static_cast<size_t>(l) * config.num_hidden_layers + k];
        for (LoraProj proj : kAllLoraProjs) {
          const auto [out, in] = LoraProjDims(config, proj);
          const int p = static_cast<int>(proj);
          jobs.push_back(
              {LoraTensorName(l, k, proj, false), {rank, in}, &lora.a[p]});
          jobs.push_back(
              {LoraTensorName(l, k, proj, true), {out, rank}, &lora.b[p]});
        }
      }
    }
  } else {
    // LoRA tensors a config does not ask for would be silently dropped.
    for (const std::string& name : checkpoint.TensorNames()) {
      if (name.rfind("model.loops.", 0) != 0) continue;
      const TensorView* view = checkpoint.Find(name);
      return absl::InvalidArgumentError(absl::StrCat(
          view->file, ": tensor '", name, "' (file offset ", view->file_offset,
          ") is present but config.json has no lora_rank"));
    }
  }

  // Validate everything before allocating anything, so a bad checkpoint fails
  // fast and without touching gigabytes of memory. LoadF32Into with an empty
  // output produces the precise error for a missing tensor, wrong shape or
  // wrong dtype.
  for (const LoadJob& job : jobs) {
    const TensorView* view = checkpoint.Find(job.name);
    if (view == nullptr || view->shape != job.shape || !IsFloat(view->dtype)) {
      absl::Status status = checkpoint.LoadF32Into(job.name, job.shape, {});
      if (status.ok()) {  // cannot happen: the tensor is inconsistent
        status = absl::InternalError(
            absl::StrCat("tensor '", job.name, "' failed validation"));
      }
      return status;
    }
  }

  // Convert straight from the memory map into the destination: the only
  // full copy of the model in memory is the f32 one. Biggest tensors first
  // for load balance.
  std::sort(jobs.begin(), jobs.end(), [](const LoadJob& a, const LoadJob& b) {
    return a.num_elements() > b.num_elements();
  });
  std::atomic<size_t> next{0};
  std::vector<absl::Status> statuses(jobs.size());
  auto worker = [&] {
    for (size_t j = next.fetch_add(1); j < jobs.size(); j = next.fetch_add(1)) {
      LoadJob& job = jobs[j];
      job.dest->resize(job.num_elements());
      statuses[j] = checkpoint.LoadF32Into(job.name, job.shape, *job.dest);
    }
  };
  std::vector<std::thread> threads;
  const int num_threads =
      std::min<int>(kNumLoadThreads, static_cast<int>(jobs.size()));
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(worker);
  worker();
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return weights;
}

}  // namespace strata
