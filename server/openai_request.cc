#include "server/openai_request.h"

#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace strata {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status TypeError(absl::string_view field, absl::string_view expected,
                       const Json& value) {
  return FieldError(
      field, absl::StrCat("expected ", expected, ", got ", value.type_name()));
}

// The fields of one JSON object, read by type; null counts as absent (the
// SDKs send null for "unset").
class Fields {
 public:
  explicit Fields(const Json& object) : object_(object) {}

  const Json* Find(absl::string_view key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<double>> Number(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) return TypeError(key, "a number", *v);
    return v->get<double>();
  }

  // An integer in [min, max]; a float with an integral value is accepted
  // (JavaScript clients cannot tell 2 from 2.0).
  absl::StatusOr<std::optional<int64_t>> Integer(absl::string_view key,
                                                 int64_t min,
                                                 int64_t max) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    return IntegerOf(key, *v, min, max);
  }

  absl::StatusOr<std::optional<bool>> Bool(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) return TypeError(key, "a boolean", *v);
    return v->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> String(
      absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) return TypeError(key, "a string", *v);
    return v->get<std::string>();
  }

  static absl::StatusOr<int64_t> IntegerOf(absl::string_view field,
                                           const Json& v, int64_t min,
                                           int64_t max) {
    int64_t value = 0;
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() &&
          v.get<uint64_t>() >
              static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        value = std::numeric_limits<int64_t>::max();
      } else {
        value = v.get<int64_t>();
      }
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (d != static_cast<double>(static_cast<int64_t>(d))) {
        return TypeError(field, "an integer", v);
      }
      value = static_cast<int64_t>(d);
    } else {
      return TypeError(field, "an integer", v);
    }
    if (value < min || value > max) {
      return FieldError(field, absl::StrCat("must be in [", min, ", ", max,
                                            "], got ", value));
    }
    return value;
  }

 private:
  const Json& object_;
};

constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();

// Fields this server does not implement; refused so that a client does not
// believe they took effect.
absl::Status RefuseUnsupported(const Fields& f) {
  for (const char* key : {"suffix", "tools", "functions", "tool_choice",
                          "function_call", "audio", "prediction"}) {
    if (f.Find(key) != nullptr) {
      return FieldError(key, "not supported by this server");
    }
  }
  ASSIGN_OR_RETURN(auto echo, f.Bool("echo"));
  if (echo.value_or(false)) return FieldError("echo", "not supported");
  if (const Json* bias = f.Find("logit_bias"); bias != nullptr) {
    if (!bias->is_object()) return TypeError("logit_bias", "an object", *bias);
    if (!bias->empty()) {
      return FieldError("logit_bias", "not supported by this server");
    }
  }
  if (const Json* format = f.Find("response_format"); format != nullptr) {
    if (!format->is_object() || format->value("type", "") != "text") {
      return FieldError("response_format",
                        "only {\"type\": \"text\"} is supported");
    }
  }
  return absl::OkStatus();
}

// The SamplingParams fields shared by both endpoints, by their OpenAI (and,
// for the extensions, vLLM) names. Ranges are left to the validator.
absl::Status ParseSampling(const Fields& f, OpenAiEndpoint endpoint,
                           v1::SamplingParams& s, OpenAiRequest& out) {
  ASSIGN_OR_RETURN(auto max_tokens, f.Integer("max_tokens", 0, kMaxU32));
  if (max_tokens.has_value()) s.set_max_tokens(*max_tokens);
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    ASSIGN_OR_RETURN(auto max_completion,
                     f.Integer("max_completion_tokens", 0, kMaxU32));
    if (max_completion.has_value()) s.set_max_tokens(*max_completion);
  }
  struct FloatField {
    const char* key;
    void (v1::SamplingParams::*set)(float);
  };
  for (const FloatField& field :
       {FloatField{"temperature", &v1::SamplingParams::set_temperature},
        FloatField{"top_p", &v1::SamplingParams::set_top_p},
        FloatField{"min_p", &v1::SamplingParams::set_min_p},
        FloatField{"repetition_penalty",
                   &v1::SamplingParams::set_repetition_penalty},
        FloatField{"presence_penalty",
                   &v1::SamplingParams::set_presence_penalty},
        FloatField{"frequency_penalty",
                   &v1::SamplingParams::set_frequency_penalty},
        FloatField{"exit_threshold",
                   &v1::SamplingParams::set_exit_threshold}}) {
    ASSIGN_OR_RETURN(auto value, f.Number(field.key));
    if (value.has_value()) (s.*field.set)(static_cast<float>(*value));
  }
  // vLLM spells "no top-k" -1; ours is 0.
  ASSIGN_OR_RETURN(auto top_k, f.Integer("top_k", -1, kMaxI32));
  if (top_k.has_value()) s.set_top_k(*top_k < 0 ? 0 : *top_k);
  ASSIGN_OR_RETURN(auto n, f.Integer("n", 1, kMaxU32));
  if (n.has_value()) {
    s.set_n(*n);
    out.n = static_cast<int32_t>(std::min<int64_t>(*n, kMaxI32));
  }
  ASSIGN_OR_RETURN(auto best_of, f.Integer("best_of", 1, kMaxU32));
  if (best_of.has_value() && *best_of != out.n) {
    return FieldError("best_of",
                      "must equal n (ranking choices is not "
                      "supported)");
  }
  ASSIGN_OR_RETURN(
      auto seed, f.Integer("seed", 0, std::numeric_limits<int64_t>::max()));
  if (seed.has_value()) s.set_seed(static_cast<uint64_t>(*seed));
  if (const Json* stop = f.Find("stop"); stop != nullptr) {
    if (stop->is_string()) {
      s.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) {
          return TypeError(absl::StrCat("stop[", i, "]"), "a string",
                           (*stop)[i]);
        }
        s.add_stop((*stop)[i].get<std::string>());
      }
    } else {
      return TypeError("stop", "a string or a list of strings", *stop);
    }
  }
  if (const Json* ids = f.Find("stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return TypeError("stop_token_ids", "a list", *ids);
    for (size_t i = 0; i < ids->size(); ++i) {
      ASSIGN_OR_RETURN(
          auto id, Fields::IntegerOf(absl::StrCat("stop_token_ids[", i, "]"),
                                     (*ids)[i], 0, kMaxI32));
      s.add_stop_token_ids(static_cast<int32_t>(id));
    }
  }
  ASSIGN_OR_RETURN(auto ignore_eos, f.Bool("ignore_eos"));
  if (ignore_eos.has_value()) s.set_ignore_eos(*ignore_eos);
  ASSIGN_OR_RETURN(auto min_loops, f.Integer("exit_min_loops", 0, kMaxU32));
  if (min_loops.has_value()) s.set_exit_min_loops(*min_loops);
  ASSIGN_OR_RETURN(auto confidence, f.String("exit_confidence"));
  if (confidence.has_value()) {
    // The names of v1::ExitConfidence without the prefix, lower case (as
    // strata-bench and strata-cli spell them).
    v1::ExitConfidence measure;
    if (!v1::ExitConfidence_Parse(
            absl::StrCat("EXIT_CONFIDENCE_", absl::AsciiStrToUpper(*confidence)),
            &measure)) {
      return FieldError(
          "exit_confidence",
          absl::StrCat("must be \"max_prob\", \"margin\", \"saturation\" "
                       "or \"classifier\", got \"",
                       *confidence, "\""));
    }
    s.set_exit_confidence(measure);
  }
  // logprobs: an integer (alternatives per token) for completions, a
  // boolean plus top_logprobs for chat.
  if (endpoint == OpenAiEndpoint::kCompletions) {
    ASSIGN_OR_RETURN(auto logprobs, f.Integer("logprobs", 0, kMaxU32));
    if (logprobs.has_value()) {
      s.set_logprobs(true);
      s.set_top_logprobs(static_cast<uint32_t>(*logprobs));
    }
  } else {
    ASSIGN_OR_RETURN(auto logprobs, f.Bool("logprobs"));
    ASSIGN_OR_RETURN(auto top, f.Integer("top_logprobs", 0, kMaxU32));
    if (top.has_value() && !logprobs.value_or(false)) {
      return FieldError("top_logprobs", "needs \"logprobs\": true");
    }
    s.set_logprobs(logprobs.value_or(false));
    if (top.has_value()) s.set_top_logprobs(static_cast<uint32_t>(*top));
  }
  out.logprobs = s.logprobs();
  // Accepted for compatibility: a caller's id for abuse monitoring.
  ASSIGN_OR_RETURN(auto user, f.String("user"));
  (void)user;
  return absl::OkStatus();
}

// "prompt": a string, a list of strings (a batch), a list of token ids, or a
// list of lists of token ids (a batch).
absl::Status ParsePrompts(const Json& prompt,
                          const v1::CompletionRequest& shared,
                          std::vector<v1::CompletionRequest>& out) {
  const auto with_text = [&](std::string text) {
    v1::CompletionRequest request = shared;
    request.set_text(std::move(text));
    out.push_back(std::move(request));
  };
  const auto with_ids = [&](const Json& ids,
                            absl::string_view field) -> absl::Status {
    v1::CompletionRequest request = shared;
    v1::TokenIds& token_ids = *request.mutable_token_ids();
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSIGN_OR_RETURN(
          auto id, Fields::IntegerOf(absl::StrCat(field, "[", i, "]"), ids[i],
                                     0, kMaxI32));
      token_ids.add_ids(static_cast<int32_t>(id));
    }
    out.push_back(std::move(request));
    return absl::OkStatus();
  };
  if (prompt.is_string()) {
    with_text(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt.is_array()) {
    return TypeError(
        "prompt", "a string, a list of strings or a list of token ids", prompt);
  }
  if (prompt.empty()) return FieldError("prompt", "must not be empty");
  if (prompt[0].is_number()) return with_ids(prompt, "prompt");
  for (size_t i = 0; i < prompt.size(); ++i) {
    const Json& item = prompt[i];
    const std::string field = absl::StrCat("prompt[", i, "]");
    if (item.is_string()) {
      with_text(item.get<std::string>());
    } else if (item.is_array()) {
      if (absl::Status st = with_ids(item, field); !st.ok()) return st;
    } else {
      return TypeError(field, "a string or a list of token ids", item);
    }
  }
  return absl::OkStatus();
}

// Chat "content": a string, null (an assistant turn without text), or a
// list of {"type": "text", "text": ...} parts, joined.
absl::StatusOr<std::string> ParseContent(const Json& content,
                                         absl::string_view field) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return TypeError(field, "a string or a list of text parts", content);
  }
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string part_field = absl::StrCat(field, "[", i, "]");
    if (!part.is_object()) return TypeError(part_field, "an object", part);
    if (part.value("type", "") != "text") {
      return FieldError(absl::StrCat(part_field, ".type"),
                        "only \"text\" parts are supported");
    }
    auto it = part.find("text");
    if (it == part.end() || !it->is_string()) {
      return FieldError(absl::StrCat(part_field, ".text"), "expected a string");
    }
    text += it->get<std::string>();
  }
  return text;
}

absl::Status ParseMessages(const Json* messages, v1::ChatRequest& chat) {
  if (messages == nullptr) return FieldError("messages", "is required");
  if (!messages->is_array()) {
    return TypeError("messages", "a list of messages", *messages);
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    const std::string field = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return TypeError(field, "an object", message);
    v1::ChatMessage& out = *chat.add_messages();
    auto role = message.find("role");
    if (role == message.end() || !role->is_string()) {
      return FieldError(absl::StrCat(field, ".role"), "expected a string");
    }
    out.set_role(role->get<std::string>());
    auto content = message.find("content");
    if (content != message.end()) {
      absl::StatusOr<std::string> text =
          ParseContent(*content, absl::StrCat(field, ".content"));
      if (!text.ok()) return text.status();
      out.set_content(*std::move(text));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint,
                                                 absl::string_view body) {
  const Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return FieldError("body", "not valid JSON");
  }
  if (!json.is_object()) return TypeError("body", "a JSON object", json);
  const Fields f(json);
  OpenAiRequest out;
  out.endpoint = endpoint;
  if (absl::Status st = RefuseUnsupported(f); !st.ok()) return st;
  ASSIGN_OR_RETURN(auto model, f.String("model"));
  out.model = model.value_or("");
  ASSIGN_OR_RETURN(auto stream, f.Bool("stream"));
  out.stream = stream.value_or(false);
  if (const Json* options = f.Find("stream_options"); options != nullptr) {
    if (!options->is_object()) {
      return TypeError("stream_options", "an object", *options);
    }
    ASSIGN_OR_RETURN(auto usage, Fields(*options).Bool("include_usage"));
    out.include_usage = usage.value_or(false);
  }
  ASSIGN_OR_RETURN(auto token_ids, f.Bool("return_token_ids"));
  out.return_token_ids = token_ids.value_or(false);
  ASSIGN_OR_RETURN(auto priority, f.Integer("priority", -kMaxI32, kMaxI32));

  v1::SamplingParams sampling;
  if (absl::Status st = ParseSampling(f, endpoint, sampling, out); !st.ok()) {
    return st;
  }
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    if (absl::Status st = ParseMessages(f.Find("messages"), out.chat);
        !st.ok()) {
      return st;
    }
    *out.chat.mutable_sampling() = std::move(sampling);
    out.chat.set_priority(static_cast<int32_t>(priority.value_or(0)));
    ASSIGN_OR_RETURN(auto chat_template, f.String("chat_template"));
    out.chat.set_chat_template(chat_template.value_or(""));
    return out;
  }
  v1::CompletionRequest shared;
  *shared.mutable_sampling() = std::move(sampling);
  shared.set_priority(static_cast<int32_t>(priority.value_or(0)));
  ASSIGN_OR_RETURN(auto add_special, f.Bool("add_special_tokens"));
  if (add_special.has_value()) shared.set_add_special_tokens(*add_special);
  const Json* prompt = f.Find("prompt");
  if (prompt == nullptr) return FieldError("prompt", "is required");
  if (absl::Status st = ParsePrompts(*prompt, shared, out.completions);
      !st.ok()) {
    return st;
  }
  return out;
}

}  // namespace strata
