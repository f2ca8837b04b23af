#include "engine/loader/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

using json = nlohmann::json;

constexpr const char* kSupportedArchitectures[] = {
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
    "StrataRecursiveLlamaForCausalLM"};
constexpr const char* kRecursiveArchitecture =
    "StrataRecursiveLlamaForCausalLM";

// Reads typed keys from one JSON object, producing errors that name the
// source file and the full key path ("rope_scaling.factor").
class Reader {
 public:
  Reader(const json& object, const std::string& source, std::string prefix)
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  absl::Status Error(const std::string& key, const std::string& message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", prefix_, key, " ", message));
  }

  // nullptr when the key is absent or null (null is how HF writes "unset").
  const json* Get(const std::string& key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // An int32 value; `required` makes absence an error, otherwise `*out` keeps
  // its default.
  absl::Status Int(const std::string& key, bool required, int32_t* out) const {
    const json* value = Get(key);
    if (value == nullptr) {
      if (required) {
        return absl::InvalidArgumentError(
            absl::StrCat(source_, ": missing required key ", prefix_, key));
      }
      return absl::OkStatus();
    }
    if (!value->is_number_integer()) {
      return Error(key,
                   absl::StrCat("must be an integer, got ", value->dump()));
    }
    if (value->is_number_unsigned()) {
      const uint64_t v = value->get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
        return Error(key, absl::StrCat("(", v, ") is out of range"));
      }
      *out = static_cast<int32_t>(v);
      return absl::OkStatus();
    }
    const int64_t v = value->get<int64_t>();
    if (v < std::numeric_limits<int32_t>::min() ||
        v > std::numeric_limits<int32_t>::max()) {
      return Error(key, absl::StrCat("(", v, ") is out of range"));
    }
    *out = static_cast<int32_t>(v);
    return absl::OkStatus();
  }

  absl::Status Float(const std::string& key, float* out) const {
    const json* value = Get(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_number()) {
      return Error(key, absl::StrCat("must be a number, got ", value->dump()));
    }
    const double v = value->get<double>();
    if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max()) {
      return Error(key, absl::StrCat("(", v, ") is out of range"));
    }
    *out = static_cast<float>(v);
    return absl::OkStatus();
  }

  absl::Status Bool(const std::string& key, bool* out) const {
    const json* value = Get(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_boolean()) {
      return Error(key,
                   absl::StrCat("must be true or false, got ", value->dump()));
    }
    *out = value->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const std::string& key, std::string* out) const {
    const json* value = Get(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_string()) {
      return Error(key, absl::StrCat("must be a string, got ", value->dump()));
    }
    *out = value->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const json& object_;
  std::string source_;
  std::string prefix_;
};

absl::StatusOr<std::optional<RopeScaling>> ParseRopeScaling(
    const json& value, const std::string& source) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": rope_scaling must be an object or null, got ",
                     value.dump()));
  }
  Reader r(value, source, "rope_scaling.");
  RopeScaling scaling;
  std::string type;
  if (absl::Status s = r.String("rope_type", &type); !s.ok()) return s;
  if (type.empty()) {
    if (absl::Status s = r.String("type", &type); !s.ok()) return s;
  }
  if (type.empty() || type == "default") return std::nullopt;
  if (type != "llama3") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": rope_scaling.rope_type '", type,
                     "' is not supported (supported: llama3, default)"));
  }
  scaling.rope_type = type;
  if (absl::Status s = r.Float("factor", &scaling.factor); !s.ok()) return s;
  if (absl::Status s = r.Float("low_freq_factor", &scaling.low_freq_factor);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = r.Float("high_freq_factor", &scaling.high_freq_factor);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = r.Int("original_max_position_embeddings", false,
                             &scaling.original_max_position_embeddings);
      !s.ok()) {
    return s;
  }
  if (!(scaling.factor > 0.0f)) {
    return r.Error("factor",
                   absl::StrCat("(", scaling.factor, ") must be positive"));
  }
  if (!(scaling.low_freq_factor > 0.0f)) {
    return r.Error("low_freq_factor", absl::StrCat("(", scaling.low_freq_factor,
                                                   ") must be positive"));
  }
  // The llama3 smoothing interpolates between the two wavelength bounds and
  // divides by (high - low).
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    return r.Error("high_freq_factor",
                   absl::StrCat("(", scaling.high_freq_factor,
                                ") must be greater than low_freq_factor (",
                                scaling.low_freq_factor, ")"));
  }
  if (scaling.original_max_position_embeddings <= 0) {
    return r.Error("original_max_position_embeddings",
                   absl::StrCat("(", scaling.original_max_position_embeddings,
                                ") must be positive"));
  }
  return scaling;
}

absl::StatusOr<TokenId> ParseTokenId(const json& value,
                                     const std::string& source,
                                     const std::string& key) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() > std::numeric_limits<TokenId>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key,
                     " must be a non-negative token id, got ", value.dump()));
  }
  return static_cast<TokenId>(value.get<int64_t>());
}

absl::Status Positive(const std::string& source, const std::string& key,
                      int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": ", key, " (", value, ") must be positive"));
}

// The recursive-model keys (docs/recursive-models.md): num_loops >= 1,
// lora_rank >= 0, lora_alpha (required when lora_rank > 0). Other
// architectures may carry them only at their plain values (N = 1, r = 0).
absl::Status ParseRecursion(const Reader& r, const std::string& source,
                            ModelConfig* c) {
  if (absl::Status s = r.Int("num_loops", false, &c->num_loops); !s.ok()) {
    return s;
  }
  if (c->num_loops < 1) {
    return r.Error("num_loops",
                   absl::StrCat("(", c->num_loops, ") must be at least 1"));
  }
  if (absl::Status s = r.Int("lora_rank", false, &c->lora_rank); !s.ok()) {
    return s;
  }
  if (c->lora_rank < 0) {
    return r.Error("lora_rank",
                   absl::StrCat("(", c->lora_rank, ") must not be negative"));
  }
  if (c->lora_rank > 0) {
    if (r.Get("lora_alpha") == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": missing key lora_alpha (required when lora_rank > 0)"));
    }
    if (absl::Status s = r.Float("lora_alpha", &c->lora_alpha); !s.ok()) {
      return s;
    }
  }
  if (c->architecture != kRecursiveArchitecture &&
      (c->num_loops != 1 || c->lora_rank != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": num_loops ", c->num_loops, " / lora_rank ",
                     c->lora_rank, " need architecture ",
                     kRecursiveArchitecture, ", not ", c->architecture));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(
    std::string_view text, std::string_view source_name) {
  // absl::StrCat takes absl::string_view, which is not std::string_view in
  // this abseil build.
  const std::string source(source_name);
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": expected a JSON object, got a ", root.type_name()));
  }
  Reader r(root, source, "");
  ModelConfig c;

  if (absl::Status s = r.String("model_type", &c.model_type); !s.ok()) {
    return s;
  }
  if (const json* archs = r.Get("architectures"); archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return r.Error("architectures",
                     absl::StrCat("must be a non-empty list of "
                                  "strings, got ",
                                  archs->dump()));
    }
    c.architecture = (*archs)[0].get<std::string>();
  } else if (c.model_type == "llama") {
    c.architecture = "LlamaForCausalLM";
  } else if (c.model_type == "mistral") {
    c.architecture = "MistralForCausalLM";
  } else if (c.model_type == "qwen2") {
    c.architecture = "Qwen2ForCausalLM";
  } else if (c.model_type == "strata_recursive_llama") {
    c.architecture = kRecursiveArchitecture;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": missing architectures (and model_type '",
                     c.model_type, "' does not imply one)"));
  }
  bool supported = false;
  for (const char* arch : kSupportedArchitectures) {
    supported |= arch == c.architecture;
  }
  if (!supported) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": architecture '", c.architecture,
                     "' is not supported (supported: ",
                     absl::StrJoin(kSupportedArchitectures, ", "), ")"));
  }
  const bool is_qwen2 = c.architecture == "Qwen2ForCausalLM";

  for (auto [key, field] : {
           std::pair{"vocab_size", &c.vocab_size},
           std::pair{"hidden_size", &c.hidden_size},
           std::pair{"intermediate_size", &c.intermediate_size},
           std::pair{"num_hidden_layers", &c.num_hidden_layers},
           std::pair{"num_attention_heads", &c.num_attention_heads},
       }) {
    if (absl::Status s = r.Int(key, /*required=*/true, field); !s.ok()) {
      return s;
    }
    if (absl::Status s = Positive(source, key, *field); !s.ok()) return s;
  }
  c.num_key_value_heads = c.num_attention_heads;
  if (absl::Status s =
          r.Int("num_key_value_heads", false, &c.num_key_value_heads);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          Positive(source, "num_key_value_heads", c.num_key_value_heads);
      !s.ok()) {
    return s;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: num_key_value_heads (%d) must divide num_attention_heads (%d)",
        source, c.num_key_value_heads, c.num_attention_heads));
  }
  if (r.Get("head_dim") != nullptr) {
    if (absl::Status s = r.Int("head_dim", false, &c.head_dim); !s.ok()) {
      return s;
    }
    if (absl::Status s = Positive(source, "head_dim", c.head_dim); !s.ok()) {
      return s;
    }
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: num_attention_heads (%d) must divide hidden_size (%d) when "
          "head_dim is not given",
          source, c.num_attention_heads, c.hidden_size));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: head_dim (%d) must be even for rotary embeddings",
                        source, c.head_dim));
  }
  if (absl::Status s =
          r.Int("max_position_embeddings", false, &c.max_position_embeddings);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Positive(source, "max_position_embeddings",
                                c.max_position_embeddings);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = r.Float("rms_norm_eps", &c.rms_norm_eps); !s.ok()) {
    return s;
  }
  if (!(c.rms_norm_eps > 0.0f)) {
    return r.Error("rms_norm_eps",
                   absl::StrCat("(", c.rms_norm_eps, ") must be positive"));
  }
  if (absl::Status s = r.Float("rope_theta", &c.rope_theta); !s.ok()) {
    return s;
  }
  if (!(c.rope_theta > 0.0f)) {
    return r.Error("rope_theta",
                   absl::StrCat("(", c.rope_theta, ") must be positive"));
  }
  if (const json* scaling = r.Get("rope_scaling"); scaling != nullptr) {
    absl::StatusOr<std::optional<RopeScaling>> parsed =
        ParseRopeScaling(*scaling, source);
    if (!parsed.ok()) return parsed.status();
    c.rope_scaling = *std::move(parsed);
  }
  if (absl::Status s = r.Bool("tie_word_embeddings", &c.tie_word_embeddings);
      !s.ok()) {
    return s;
  }
  // Qwen2 always has q/k/v biases (its config has no key for it).
  c.attention_bias = is_qwen2;
  if (absl::Status s = r.Bool("attention_bias", &c.attention_bias); !s.ok()) {
    return s;
  }

  // Features of these architectures that the forward pass does not have.
  std::string hidden_act = "silu";
  if (absl::Status s = r.String("hidden_act", &hidden_act); !s.ok()) return s;
  if (hidden_act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": hidden_act '", hidden_act,
                     "' is not supported (only silu)"));
  }
  bool mlp_bias = false;
  if (absl::Status s = r.Bool("mlp_bias", &mlp_bias); !s.ok()) return s;
  if (mlp_bias) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": mlp_bias true is not supported"));
  }

  // Newer transformers write "dtype" instead of "torch_dtype".
  if (absl::Status s = r.String("torch_dtype", &c.torch_dtype); !s.ok()) {
    return s;
  }
  if (c.torch_dtype.empty()) {
    if (absl::Status s = r.String("dtype", &c.torch_dtype); !s.ok()) return s;
  }
  if (!c.torch_dtype.empty() && c.torch_dtype != "float32" &&
      c.torch_dtype != "float16" && c.torch_dtype != "bfloat16") {
    return r.Error("torch_dtype", absl::StrCat("'", c.torch_dtype,
                                               "' is not one of float32, "
                                               "float16, bfloat16"));
  }

  if (absl::Status s = ParseRecursion(r, source, &c); !s.ok()) return s;

  if (const json* bos = r.Get("bos_token_id"); bos != nullptr) {
    absl::StatusOr<TokenId> id = ParseTokenId(*bos, source, "bos_token_id");
    if (!id.ok()) return id.status();
    c.bos_token_id = *id;
  }
  if (const json* eos = r.Get("eos_token_id"); eos != nullptr) {
    if (eos->is_array()) {
      for (const json& item : *eos) {
        absl::StatusOr<TokenId> id = ParseTokenId(item, source, "eos_token_id");
        if (!id.ok()) return id.status();
        c.eos_token_ids.push_back(*id);
      }
    } else {
      absl::StatusOr<TokenId> id = ParseTokenId(*eos, source, "eos_token_id");
      if (!id.ok()) return id.status();
      c.eos_token_ids.push_back(*id);
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": read error"));
  }
  return FromJson(buffer.str(), path);
}

std::string ModelConfig::DebugString() const {
  std::string out = absl::StrFormat(
      "ModelConfig{architecture=%s model_type=%s vocab_size=%d hidden_size=%d "
      "intermediate_size=%d num_hidden_layers=%d num_attention_heads=%d "
      "num_key_value_heads=%d head_dim=%d max_position_embeddings=%d "
      "rms_norm_eps=%g rope_theta=%g",
      architecture, model_type, vocab_size, hidden_size, intermediate_size,
      num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
      max_position_embeddings, rms_norm_eps, rope_theta);
  if (rope_scaling.has_value()) {
    absl::StrAppendFormat(
        &out,
        " rope_scaling={rope_type=%s factor=%g low_freq_factor=%g "
        "high_freq_factor=%g original_max_position_embeddings=%d}",
        rope_scaling->rope_type, rope_scaling->factor,
        rope_scaling->low_freq_factor, rope_scaling->high_freq_factor,
        rope_scaling->original_max_position_embeddings);
  }
  absl::StrAppendFormat(&out,
                        " tie_word_embeddings=%s attention_bias=%s "
                        "torch_dtype=%s bos_token_id=%s eos_token_ids=[%s]",
                        tie_word_embeddings ? "true" : "false",
                        attention_bias ? "true" : "false", torch_dtype,
                        bos_token_id.has_value() ? absl::StrCat(*bos_token_id)
                                                 : std::string("none"),
                        absl::StrJoin(eos_token_ids, ","));
  if (num_loops != 1 || lora_rank != 0) {
    absl::StrAppendFormat(&out, " num_loops=%d lora_rank=%d lora_alpha=%g",
                          num_loops, lora_rank, lora_alpha);
  }
  out += "}";
  return out;
}

}  // namespace strata
