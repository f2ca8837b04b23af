#include "engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numbers>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/rope_table.h"

namespace strata {
namespace {

// Uploads a host weight vector as a tensor of `shape` (empty stays empty).
absl::StatusOr<Tensor> UploadWeight(Backend* backend, std::vector<float> host,
                                    std::vector<int64_t> shape,
                                    const std::string& name,
                                    WeightRole role = WeightRole::kLinear) {
  int64_t expected = 1;
  for (int64_t d : shape) expected *= d;
  if (static_cast<int64_t>(host.size()) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", name, " has ", host.size(),
                     " elements but the config implies ", expected));
  }
  return backend->UploadWeight(std::move(host), std::move(shape), role);
}

// A part of a fused weight: its host rows [rows, cols] (consumed), its
// name for errors, and where its slice of the fused weight goes.
struct FusedPart {
  std::vector<float>* host;
  int64_t rows;
  std::string name;
  Tensor* slice;
};

// Uploads the parts' rows, in order, as one [sum of rows, cols] weight and
// sets each part's slice of it (Backend::WeightRows).
absl::Status UploadFused(Backend* backend, std::vector<FusedPart> parts,
                         int64_t cols, Tensor* fused) {
  int64_t total_rows = 0;
  for (const FusedPart& part : parts) {
    if (static_cast<int64_t>(part.host->size()) != part.rows * cols) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight ", part.name, " has ", part.host->size(),
                       " elements but the config implies ", part.rows * cols));
    }
    total_rows += part.rows;
  }
  std::vector<float> host;
  host.reserve(static_cast<size_t>(total_rows * cols));
  for (const FusedPart& part : parts) {
    host.insert(host.end(), part.host->begin(), part.host->end());
    std::vector<float>().swap(*part.host);
  }
  ASSIGN_OR_RETURN(*fused,
                   backend->UploadWeight(std::move(host), {total_rows, cols},
                                         WeightRole::kLinear));
  int64_t begin = 0;
  for (const FusedPart& part : parts) {
    ASSIGN_OR_RETURN(*part.slice,
                     backend->WeightRows(*fused, begin, part.rows));
    begin += part.rows;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<float>> LlamaModel::RopeInverseFrequencies(
    const ModelConfig& config) {
  const int32_t half = config.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int32_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(static_cast<double>(config.rope_theta),
                                 2.0 * i / config.head_dim);
  }
  if (config.rope_scaling.has_value()) {
    const RopeScaling& s = *config.rope_scaling;
    if (s.rope_type != "llama3") {
      return absl::UnimplementedError(
          absl::StrCat("rope_scaling type '", s.rope_type,
                       "' is not supported (only llama3)"));
    }
    // Llama 3: long wavelengths are slowed by `factor`, short ones kept,
    // and the band between smoothly interpolated.
    const double old_context = s.original_max_position_embeddings;
    const double low_freq_wavelen = old_context / s.low_freq_factor;
    const double high_freq_wavelen = old_context / s.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        f = f / s.factor;
        continue;
      }
      const double smooth = (old_context / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return std::vector<float>(inv_freq.begin(), inv_freq.end());
}

LlamaModel::LlamaModel(const ModelConfig& config, Backend* backend,
                       const Options& options)
    : config_(config),
      backend_(backend),
      options_(options),
      store_(backend, config.hidden_size) {
  attention_.num_heads = config.num_attention_heads;
  attention_.num_kv_heads = config.num_key_value_heads;
  attention_.head_dim = config.head_dim;
  attention_.block_size = options.block_size;
  attention_.scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
}

LlamaModel::~LlamaModel() { FinishStep().IgnoreError(); }

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(
    const ModelConfig& config, ModelWeights weights, Backend* backend,
    const Options& options) {
  if (config.num_attention_heads <= 0 || config.num_key_value_heads <= 0 ||
      config.num_attention_heads % config.num_key_value_heads != 0 ||
      config.head_dim <= 0 || config.head_dim % 2 != 0 ||
      config.max_position_embeddings <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported attention config: ", config.DebugString()));
  }
  if (static_cast<int32_t>(weights.layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights have ", weights.layers.size(), " layers but config.json says ",
        config.num_hidden_layers));
  }
  if (config.num_loops < 1 || config.lora_rank < 0 ||
      weights.lora.size() != (config.lora_rank > 0
                                  ? static_cast<size_t>(config.num_loops) *
                                        config.num_hidden_layers
                                  : 0u)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights have LoRA for ", weights.lora.size(),
                     " (loop, layer) pairs but config.json says num_loops ",
                     config.num_loops, ", lora_rank ", config.lora_rank));
  }
  std::unique_ptr<LlamaModel> model(new LlamaModel(config, backend, options));
  const int64_t hidden = config.hidden_size;
  const int64_t vocab = config.vocab_size;
  const int64_t inter = config.intermediate_size;
  const int64_t head_dim = config.head_dim;
  const int64_t q_dim = config.num_attention_heads * head_dim;
  const int64_t kv_dim = config.num_key_value_heads * head_dim;

  ASSIGN_OR_RETURN(
      model->embed_tokens_,
      UploadWeight(backend, std::move(weights.embed_tokens), {vocab, hidden},
                   "model.embed_tokens.weight", WeightRole::kTable));
  ASSIGN_OR_RETURN(
      model->final_norm_,
      UploadWeight(backend, std::move(weights.final_norm), {hidden},
                   "model.norm.weight", WeightRole::kVector));
  if (!weights.lm_head.empty()) {
    ASSIGN_OR_RETURN(
        model->lm_head_,
        UploadWeight(backend, std::move(weights.lm_head), {vocab, hidden},
                     "lm_head.weight", WeightRole::kTable));
  } else if (!config.tie_word_embeddings) {
    return absl::InvalidArgumentError(
        "lm_head.weight is missing and tie_word_embeddings is false");
  }

  if (!options.exit_classifier.empty()) {
    const int64_t early = config.num_loops - 1;
    if (early < 1 || static_cast<int64_t>(options.exit_classifier.size()) !=
                         early * (hidden + 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "exit classifier has ", options.exit_classifier.size(),
          " floats but num_loops ", config.num_loops, " and hidden ", hidden,
          " imply [", early, ", ", hidden + 1, "]"));
    }
    ASSIGN_OR_RETURN(model->exit_classifier_,
                     backend->Upload(options.exit_classifier,
                                     {early, hidden + 1}));
  }

  ASSIGN_OR_RETURN(const std::vector<float> inv_freq,
                   RopeInverseFrequencies(config));
  std::vector<float> table(static_cast<size_t>(config.max_position_embeddings) *
                           head_dim);
  BuildRopeTable(inv_freq, config.max_position_embeddings, table.data());
  ASSIGN_OR_RETURN(model->rope_table_,
                   backend->Upload(std::move(table),
                                   {config.max_position_embeddings, head_dim}));

  ASSIGN_OR_RETURN(model->kv_cache_,
                   PagedKvCache::Create(backend, config, options.block_size,
                                        options.num_blocks));
  // One weight for q, k and v and one for gate and up where the backend can
  // slice them back (Backend::WeightRowAlignment): each part's rows must
  // start on its alignment.
  const int64_t align =
      options.fuse_projections ? backend->WeightRowAlignment() : 0;
  const bool fuse_qkv = align > 0 && q_dim % align == 0 && kv_dim % align == 0;
  const bool fuse_gate_up = align > 0 && inter % align == 0;
  model->layers_.resize(config.num_hidden_layers);
  for (int32_t i = 0; i < config.num_hidden_layers; ++i) {
    LayerWeights& w = weights.layers[i];
    LayerTensors& t = model->layers_[i];
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    ASSIGN_OR_RETURN(
        t.input_norm,
        UploadWeight(backend, std::move(w.input_norm), {hidden},
                     prefix + "input_layernorm.weight", WeightRole::kVector));
    if (fuse_qkv) {
      RETURN_IF_ERROR(UploadFused(
          backend,
          {{&w.q_proj, q_dim, prefix + "self_attn.q_proj.weight", &t.q_proj},
           {&w.k_proj, kv_dim, prefix + "self_attn.k_proj.weight", &t.k_proj},
           {&w.v_proj, kv_dim, prefix + "self_attn.v_proj.weight", &t.v_proj}},
          hidden, &t.qkv_proj));
      ASSIGN_OR_RETURN(t.kv_proj,
                       backend->WeightRows(t.qkv_proj, q_dim, 2 * kv_dim));
    } else {
      ASSIGN_OR_RETURN(
          t.q_proj, UploadWeight(backend, std::move(w.q_proj), {q_dim, hidden},
                                 prefix + "self_attn.q_proj.weight"));
      ASSIGN_OR_RETURN(
          t.k_proj, UploadWeight(backend, std::move(w.k_proj), {kv_dim, hidden},
                                 prefix + "self_attn.k_proj.weight"));
      ASSIGN_OR_RETURN(
          t.v_proj, UploadWeight(backend, std::move(w.v_proj), {kv_dim, hidden},
                                 prefix + "self_attn.v_proj.weight"));
    }
    if (config.attention_bias) {
      ASSIGN_OR_RETURN(
          t.q_bias,
          UploadWeight(backend, std::move(w.q_bias), {q_dim},
                       prefix + "self_attn.q_proj.bias", WeightRole::kVector));
      ASSIGN_OR_RETURN(
          t.k_bias,
          UploadWeight(backend, std::move(w.k_bias), {kv_dim},
                       prefix + "self_attn.k_proj.bias", WeightRole::kVector));
      ASSIGN_OR_RETURN(
          t.v_bias,
          UploadWeight(backend, std::move(w.v_bias), {kv_dim},
                       prefix + "self_attn.v_proj.bias", WeightRole::kVector));
    }
    ASSIGN_OR_RETURN(t.o_proj,
                     UploadWeight(backend, std::move(w.o_proj), {hidden, q_dim},
                                  prefix + "self_attn.o_proj.weight"));
    ASSIGN_OR_RETURN(
        t.post_attention_norm,
        UploadWeight(backend, std::move(w.post_attention_norm), {hidden},
                     prefix + "post_attention_layernorm.weight",
                     WeightRole::kVector));
    if (fuse_gate_up) {
      RETURN_IF_ERROR(UploadFused(
          backend,
          {{&w.gate_proj, inter, prefix + "mlp.gate_proj.weight", &t.gate_proj},
           {&w.up_proj, inter, prefix + "mlp.up_proj.weight", &t.up_proj}},
          hidden, &t.gate_up_proj));
    } else {
      ASSIGN_OR_RETURN(
          t.gate_proj,
          UploadWeight(backend, std::move(w.gate_proj), {inter, hidden},
                       prefix + "mlp.gate_proj.weight"));
      ASSIGN_OR_RETURN(t.up_proj, UploadWeight(backend, std::move(w.up_proj),
                                               {inter, hidden},
                                               prefix + "mlp.up_proj.weight"));
    }
    ASSIGN_OR_RETURN(
        t.down_proj,
        UploadWeight(backend, std::move(w.down_proj), {hidden, inter},
                     prefix + "mlp.down_proj.weight"));
  }

  // LoRA (relaxed recursive models): f32 on every backend (a few MB at
  // most), with alpha / r folded into B.
  const float lora_scale = config.lora_scale();
  model->lora_.resize(weights.lora.size());
  for (size_t i = 0; i < weights.lora.size(); ++i) {
    const int32_t loop = static_cast<int32_t>(i) / config.num_hidden_layers;
    const int32_t layer = static_cast<int32_t>(i) % config.num_hidden_layers;
    // The stacked A of the fused groups, before the parts are consumed.
    auto stack = [&](std::initializer_list<LoraProj> projs,
                     Tensor* stacked) -> absl::Status {
      std::vector<float> host;
      for (LoraProj proj : projs) {
        const std::vector<float>& a = weights.lora[i].a[static_cast<int>(proj)];
        if (static_cast<int64_t>(a.size()) != config.lora_rank * hidden) {
          return absl::InvalidArgumentError(
              absl::StrCat("LoRA of ", LoraTensorName(loop, layer, proj, false),
                           " has the wrong size"));
        }
        host.insert(host.end(), a.begin(), a.end());
      }
      const int64_t rows =
          static_cast<int64_t>(projs.size()) * config.lora_rank;
      ASSIGN_OR_RETURN(*stacked,
                       backend->UploadWeight(std::move(host), {rows, hidden},
                                             WeightRole::kAdapter));
      return absl::OkStatus();
    };
    if (fuse_qkv) {
      RETURN_IF_ERROR(stack({LoraProj::kQ, LoraProj::kK, LoraProj::kV},
                            &model->lora_[i].a_qkv));
      RETURN_IF_ERROR(
          stack({LoraProj::kK, LoraProj::kV}, &model->lora_[i].a_kv));
    }
    if (fuse_gate_up) {
      RETURN_IF_ERROR(
          stack({LoraProj::kGate, LoraProj::kUp}, &model->lora_[i].a_gate_up));
    }
    for (LoraProj proj : kAllLoraProjs) {
      const int p = static_cast<int>(proj);
      const auto [out, in] = LoraProjDims(config, proj);
      const int64_t rank = config.lora_rank;
      std::vector<float>& a = weights.lora[i].a[p];
      std::vector<float>& b = weights.lora[i].b[p];
      if (static_cast<int64_t>(a.size()) != rank * in ||
          static_cast<int64_t>(b.size()) != out * rank) {
        return absl::InvalidArgumentError(
            absl::StrCat("LoRA of ", LoraTensorName(loop, layer, proj, false),
                         " has the wrong size"));
      }
      for (float& v : b) v *= lora_scale;
      ASSIGN_OR_RETURN(model->lora_[i].a[p],
                       backend->UploadWeight(std::move(a), {rank, in},
                                             WeightRole::kAdapter));
      ASSIGN_OR_RETURN(model->lora_[i].scaled_b[p],
                       backend->UploadWeight(std::move(b), {out, rank},
                                             WeightRole::kAdapter));
    }
  }
  return model;
}

absl::Status LlamaModel::Validate(std::span<const WorkItem> items) const {
  const int64_t bs = options_.block_size;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "work item ", i, " (request ", item.request_id, "): ", parts...));
    };
    if (item.tokens.empty()) return error("no tokens");
    if (item.start_position < 0) {
      return error("negative start_position ", item.start_position);
    }
    const int64_t end =
        static_cast<int64_t>(item.start_position) + item.tokens.size();
    if (end > config_.max_position_embeddings) {
      // The scheduler caps requests at the context length, so this is a
      // scheduler bug; refuse the step rather than read past the RoPE table.
      return error("positions [", item.start_position, ", ", end,
                   ") exceed max_position_embeddings (",
                   config_.max_position_embeddings, "): scheduler bug");
    }
    for (size_t t = 0; t < item.tokens.size(); ++t) {
      if (item.tokens[t] < 0 || item.tokens[t] >= config_.vocab_size) {
        return error("token id ", item.tokens[t], " at index ", t,
                     " is outside the vocabulary [0, ", config_.vocab_size,
                     ")");
      }
    }
    const int64_t blocks_needed = (end + bs - 1) / bs;
    if (static_cast<int64_t>(item.block_table.size()) < blocks_needed) {
      return error("block table has ", item.block_table.size(),
                   " blocks but positions up to ", end - 1, " need ",
                   blocks_needed);
    }
    for (size_t b = 0; b < item.block_table.size(); ++b) {
      if (item.block_table[b] < 0 ||
          item.block_table[b] >= options_.num_blocks) {
        return error("block id ", item.block_table[b], " at block_table[", b,
                     "] is out of range [0, ", options_.num_blocks, ")");
      }
    }
  }
  return ValidateLoops(items);
}

absl::StatusOr<Tensor> LlamaModel::Rows(Workspace& workspace, int64_t rows,
                                        int64_t width) {
  if (rows > workspace.capacity_rows) {
    // Grow geometrically so a growing batch does not reallocate every step.
    const int64_t capacity = std::max(rows, workspace.capacity_rows * 3 / 2);
    ASSIGN_OR_RETURN(workspace.buffer,
                     backend_->Allocate(ElementType::kF32, {capacity, width}));
    workspace.capacity_rows = capacity;
  }
  return workspace.buffer.Rows(0, rows);
}

absl::StatusOr<std::vector<float>> LlamaModel::Forward(
    std::span<const WorkItem> items, std::span<const int32_t> logit_rows) {
  ASSIGN_OR_RETURN(const Tensor* out, ForwardToDevice(items, logit_rows));
  std::vector<float> logits(logit_rows.size() *
                            static_cast<size_t>(config_.vocab_size));
  if (out == nullptr) return logits;
  if (absl::Status status =
          backend_->CopyToHost(*out, std::span<float>(logits));
      !status.ok()) {
    return status;
  }
  return logits;
}

absl::StatusOr<Tensor> LlamaModel::Scratch(FlatWorkspace& workspace,
                                           int64_t rows, int64_t width) {
  const int64_t elements = rows * width;
  if (elements > workspace.capacity) {
    const int64_t capacity = std::max(elements, workspace.capacity * 3 / 2);
    ASSIGN_OR_RETURN(workspace.buffer,
                     backend_->Allocate(ElementType::kF32, {capacity}));
    workspace.capacity = capacity;
  }
  return Tensor(workspace.buffer.data(), ElementType::kF32, {rows, width},
                nullptr);
}

absl::StatusOr<const Tensor*> LlamaModel::ForwardToDevice(
    std::span<const WorkItem> items, std::span<const int32_t> logit_rows) {
  StepOutput out;
  RETURN_IF_ERROR(RunStep(items, logit_rows, false, &out));
  // The test peers read the cache after a forward pass: no task outlives it.
  RETURN_IF_ERROR(FinishStep());
  return out.logits;
}

absl::StatusOr<LlamaModel::StepOutput> LlamaModel::Step(
    std::span<const WorkItem> items) {
  StepOutput out;
  if (absl::Status status = Step(items, &out); !status.ok()) return status;
  return out;
}

absl::Status LlamaModel::Step(std::span<const WorkItem> items,
                              StepOutput* out) {
  return RunStep(items, {}, true, out);
}

absl::Status LlamaModel::Project(const Tensor& x, const Tensor& w,
                                 int32_t layer, LoraProj proj,
                                 std::span<const LoopSegment> segments,
                                 Tensor* out) {
  backend_->MatMul(x, w, out);
  return AddLora(x, layer, proj, segments, out);
}

absl::Status LlamaModel::AddLora(const Tensor& x, int32_t layer, LoraProj proj,
                                 std::span<const LoopSegment> segments,
                                 Tensor* out) {
  if (lora_.empty()) return absl::OkStatus();
  Backend& b = *backend_;
  // The segmented low-rank product, one segment (loop) at a time in row
  // order: y_seg += (x_seg A^T) (s B)^T. Row-wise ops only, so a row's
  // result does not depend on the other rows (batch invariance).
  const int p = static_cast<int>(proj);
  auto pair = [&](const LoopSegment& seg) -> const LayerLoraTensors& {
    return lora_[static_cast<size_t>(seg.loop) * config_.num_hidden_layers +
                 layer];
  };
  // One gathered call where the backend has it (the same result).
  low_rank_segments_.clear();
  for (const LoopSegment& seg : segments) {
    low_rank_segments_.push_back(
        {seg.first_row, seg.num_rows, &pair(seg).a[p], &pair(seg).scaled_b[p]});
  }
  if (b.AddLowRank(x, low_rank_segments_, out)) return absl::OkStatus();
  for (const LoopSegment& seg : segments) {
    const LayerLoraTensors& lora = pair(seg);
    ASSIGN_OR_RETURN(Tensor t, Rows(lora_t_, seg.num_rows, config_.lora_rank));
    ASSIGN_OR_RETURN(Tensor u, Scratch(lora_u_, seg.num_rows, out->dim(1)));
    b.MatMul(x.Rows(seg.first_row, seg.num_rows), lora.a[p], &t);
    b.MatMul(t, lora.scaled_b[p], &u);
    Tensor y = out->Rows(seg.first_row, seg.num_rows);
    b.Add(u, &y);
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AddLoraGroup(const Tensor& x, int32_t layer,
                                      std::span<const LoraProj> projs,
                                      Tensor LayerLoraTensors::*stacked,
                                      std::span<const LoopSegment> segments,
                                      std::span<Tensor* const> outs) {
  if (lora_.empty()) return absl::OkStatus();
  low_rank_groups_.clear();
  bool stacked_everywhere = true;
  for (const LoopSegment& seg : segments) {
    const LayerLoraTensors& pair =
        lora_[static_cast<size_t>(seg.loop) * config_.num_hidden_layers +
              layer];
    stacked_everywhere = stacked_everywhere && !(pair.*stacked).empty();
    LowRankGroupSegment group{seg.first_row, seg.num_rows, &(pair.*stacked)};
    for (size_t p = 0; p < projs.size(); ++p) {
      group.b[p] = &pair.scaled_b[static_cast<int>(projs[p])];
    }
    low_rank_groups_.push_back(group);
  }
  if (stacked_everywhere &&
      backend_->AddLowRankGroup(x, low_rank_groups_, outs)) {
    return absl::OkStatus();
  }
  for (size_t p = 0; p < projs.size(); ++p) {
    RETURN_IF_ERROR(AddLora(x, layer, projs[p], segments, outs[p]));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::RunBlock(const LoopPlanner::Round& round, Tensor* x,
                                  bool merge_propagation) {
  const int64_t n = round.num_rows;
  const int64_t hidden = config_.hidden_size;
  const int64_t q_dim =
      static_cast<int64_t>(config_.num_attention_heads) * config_.head_dim;
  const int64_t kv_dim =
      static_cast<int64_t>(config_.num_key_value_heads) * config_.head_dim;
  const int64_t inter = config_.intermediate_size;
  const float eps = config_.rms_norm_eps;

  // The pending propagated K/V's m rows follow the round's n in the rows
  // the K/V products and writes take (normed_all, q_all, k, v): each layer
  // norms their exit states with its own input norm, and the products,
  // LoRA, RoPE and K/V write take them with the round's rows. Attention
  // and everything after it take the round's rows only.
  const Propagation& pending = propagation_;
  const int64_t m = merge_propagation ? pending.num_pairs() : 0;
  std::span<const LoopSegment> kv_segs = round.segments;
  std::span<const int32_t> kv_positions = round.positions;
  std::span<const int32_t> kv_slots = round.kv_slots;
  if (m > 0) {
    merged_segments_.assign(round.segments.begin(), round.segments.end());
    for (LoopSegment seg : pending.segments) {
      seg.first_row += static_cast<int32_t>(n);
      merged_segments_.push_back(seg);
    }
    merged_positions_.assign(round.positions.begin(), round.positions.end());
    merged_positions_.insert(merged_positions_.end(), pending.pair_pos.begin(),
                             pending.pair_pos.end());
    merged_slots_.assign(round.kv_slots.begin(), round.kv_slots.end());
    merged_slots_.insert(merged_slots_.end(), pending.pair_slot.begin(),
                         pending.pair_slot.end());
    kv_segs = merged_segments_;
    kv_positions = merged_positions_;
    kv_slots = merged_slots_;
  }
  ASSIGN_OR_RETURN(Tensor normed_all, Rows(normed_, n + m, hidden));
  ASSIGN_OR_RETURN(Tensor q_all, Rows(q_, n + m, q_dim));
  ASSIGN_OR_RETURN(Tensor k, Rows(k_, n + m, kv_dim));
  ASSIGN_OR_RETURN(Tensor v, Rows(v_, n + m, kv_dim));
  Tensor normed = normed_all.Rows(0, n);
  Tensor q = q_all.Rows(0, n);
  ASSIGN_OR_RETURN(Tensor attn, Rows(attn_, n, q_dim));
  ASSIGN_OR_RETURN(Tensor proj, Rows(proj_, n, hidden));
  ASSIGN_OR_RETURN(Tensor gate, Rows(gate_, n, inter));
  ASSIGN_OR_RETURN(Tensor up, Rows(up_, n, inter));

  Backend& b = *backend_;
  const std::span<const LoopSegment> segs = round.segments;
  // Each residual add is fused with the norm that reads it next (the default
  // AddRmsNorm is Add then RmsNorm: the CPU results are the unfused ones).
  b.RmsNorm(*x, layers_.front().input_norm, eps, &normed);
  for (size_t l = 0; l < layers_.size(); ++l) {
    LayerTensors& layer = layers_[l];
    const int32_t li = static_cast<int32_t>(l);
    // Attention block (normed = input_norm(x) here).
    if (m > 0) {
      Tensor pending_normed = normed_all.Rows(n, m);
      b.RmsNorm(pending.h, layer.input_norm, eps, &pending_normed);
    }
    if (!layer.qkv_proj.empty()) {
      // The pending rows' q is computed and not used: one product serves.
      ASSIGN_OR_RETURN(Tensor qkv, Rows(qkv_, n + m, q_dim + 2 * kv_dim));
      b.MatMul(normed_all, layer.qkv_proj, &qkv);
      Tensor* const parts[] = {&q_all, &k, &v};
      b.SplitColumns(qkv, parts);
      static constexpr LoraProj kQkv[] = {LoraProj::kQ, LoraProj::kK,
                                          LoraProj::kV};
      if (m > 0 && !lora_.empty() && !lora_.front().a_kv.empty()) {
        // The pending rows take k's and v's LoRA only, from the stacked A
        // of both: a rank-2r A is one panel, whose A-products of two loops'
        // rows share a register tile (CpuBackend::AddLowRankGroup).
        RETURN_IF_ERROR(AddLoraGroup(normed_all, li, kQkv,
                                     &LayerLoraTensors::a_qkv, segs, parts));
        static constexpr LoraProj kKv[] = {LoraProj::kK, LoraProj::kV};
        Tensor* const kv_parts[] = {&k, &v};
        RETURN_IF_ERROR(AddLoraGroup(
            normed_all, li, kKv, &LayerLoraTensors::a_kv,
            std::span<const LoopSegment>(kv_segs).subspan(segs.size()),
            kv_parts));
      } else {
        RETURN_IF_ERROR(AddLoraGroup(normed_all, li, kQkv,
                                     &LayerLoraTensors::a_qkv, kv_segs, parts));
      }
    } else {
      RETURN_IF_ERROR(
          Project(normed, layer.q_proj, li, LoraProj::kQ, segs, &q));
      RETURN_IF_ERROR(
          Project(normed_all, layer.k_proj, li, LoraProj::kK, kv_segs, &k));
      RETURN_IF_ERROR(
          Project(normed_all, layer.v_proj, li, LoraProj::kV, kv_segs, &v));
    }
    if (!layer.q_bias.empty()) {
      b.AddBias(layer.q_bias, &q);
      b.AddBias(layer.k_bias, &k);
      b.AddBias(layer.v_bias, &v);
    }
    b.Rope(rope_table_, round.positions, config_.head_dim, &q);
    b.Rope(rope_table_, kv_positions, config_.head_dim, &k);
    PagedKvCache::Layer& cache = kv_cache_.layer(li);
    b.WriteKv(k, v, kv_slots, attention_, &cache.k_view, &cache.v_view);
    b.PagedAttention(q, cache.k_view, cache.v_view, attention_, round.sequences,
                     &attn);
    RETURN_IF_ERROR(Project(attn, layer.o_proj, li, LoraProj::kO, segs, &proj));
    b.AddRmsNorm(proj, layer.post_attention_norm, eps, x, &normed);
    // MLP block (SwiGLU).
    if (!layer.gate_up_proj.empty()) {
      ASSIGN_OR_RETURN(Tensor gate_up, Rows(gate_up_, n, 2 * inter));
      b.MatMul(normed, layer.gate_up_proj, &gate_up);
      Tensor* const parts[] = {&gate, &up};
      b.SplitColumns(gate_up, parts);
      static constexpr LoraProj kGateUp[] = {LoraProj::kGate, LoraProj::kUp};
      RETURN_IF_ERROR(AddLoraGroup(normed, li, kGateUp,
                                   &LayerLoraTensors::a_gate_up, segs, parts));
    } else {
      RETURN_IF_ERROR(
          Project(normed, layer.gate_proj, li, LoraProj::kGate, segs, &gate));
      RETURN_IF_ERROR(
          Project(normed, layer.up_proj, li, LoraProj::kUp, segs, &up));
    }
    b.SiluMul(gate, up, &gate);
    RETURN_IF_ERROR(
        Project(gate, layer.down_proj, li, LoraProj::kDown, segs, &proj));
    if (l + 1 < layers_.size()) {
      b.AddRmsNorm(proj, layers_[l + 1].input_norm, eps, x, &normed);
    } else {
      b.Add(proj, x);
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Head(const Tensor& x, std::span<const int32_t> rows,
                              Tensor* out) {
  const int64_t r = static_cast<int64_t>(rows.size());
  ASSIGN_OR_RETURN(Tensor selected, Rows(selected_, r, config_.hidden_size));
  Backend& b = *backend_;
  b.GatherRows(x, rows, &selected);
  HeadOfStates(std::move(selected), out);
  return absl::OkStatus();
}

void LlamaModel::HeadOfStates(Tensor states, Tensor* out) {
  Backend& b = *backend_;
  b.RmsNorm(states, final_norm_, config_.rms_norm_eps, &states);
  b.MatMul(states, lm_head_.empty() ? embed_tokens_ : lm_head_, out);
}

}  // namespace strata
