#include "server/request_validator.h"

#include <cmath>
#include <cstddef>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "text/chat_template.h"
#include "text/utf8.h"

namespace strata {
namespace {

// absl::string_view: Debian's abseil does not alias std::string_view.
absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

// `value` in [lo, hi]; written so that NaN fails.
bool InClosed(float value, float lo, float hi) {
  return value >= lo && value <= hi;
}

absl::Status CheckUtf8(std::string_view text, absl::string_view field) {
  if (std::optional<size_t> at = FindInvalidUtf8(text); at.has_value()) {
    return FieldError(field, absl::StrCat("invalid UTF-8 at byte ", *at));
  }
  return absl::OkStatus();
}

bool IsKnownRole(std::string_view role) {
  return role == "system" || role == "user" || role == "assistant";
}

}  // namespace

absl::Status RequestValidator::ValidateSampling(
    const v1::SamplingParams& s) const {
  if (s.has_max_tokens() && s.max_tokens() == 0) {
    return FieldError("sampling.max_tokens", "must be at least 1, got 0");
  }
  if (s.has_temperature() && !InClosed(s.temperature(), 0.0f, 100.0f)) {
    return FieldError(
        "sampling.temperature",
        absl::StrCat("must be in [0, 100], got ", s.temperature()));
  }
  if (s.has_top_k() && s.top_k() < 0) {
    return FieldError(
        "sampling.top_k",
        absl::StrCat("must be >= 0 (0 disables), got ", s.top_k()));
  }
  if (s.has_top_p() && !(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
    return FieldError("sampling.top_p",
                      absl::StrCat("must be in (0, 1], got ", s.top_p()));
  }
  if (s.has_min_p() && !InClosed(s.min_p(), 0.0f, 1.0f)) {
    return FieldError("sampling.min_p",
                      absl::StrCat("must be in [0, 1], got ", s.min_p()));
  }
  if (s.has_repetition_penalty() &&
      !(s.repetition_penalty() > 0.0f && s.repetition_penalty() <= 10.0f)) {
    return FieldError(
        "sampling.repetition_penalty",
        absl::StrCat("must be in (0, 10], got ", s.repetition_penalty()));
  }
  if (s.has_presence_penalty() &&
      !InClosed(s.presence_penalty(), -2.0f, 2.0f)) {
    return FieldError(
        "sampling.presence_penalty",
        absl::StrCat("must be in [-2, 2], got ", s.presence_penalty()));
  }
  if (s.has_frequency_penalty() &&
      !InClosed(s.frequency_penalty(), -2.0f, 2.0f)) {
    return FieldError(
        "sampling.frequency_penalty",
        absl::StrCat("must be in [-2, 2], got ", s.frequency_penalty()));
  }
  if (s.has_exit_threshold()) {
    if (!InClosed(s.exit_threshold(), 0.0f, 1.0f)) {
      return FieldError(
          "sampling.exit_threshold",
          absl::StrCat("must be in [0, 1], got ", s.exit_threshold()));
    }
    if (s.exit_threshold() < 1.0f && limits_.num_loops < 2) {
      return FieldError("sampling.exit_threshold",
                        "early exit needs a recursive model (this one has "
                        "one loop); leave it unset or 1");
    }
  }
  if (s.has_exit_min_loops() &&
      (s.exit_min_loops() < 1 ||
       s.exit_min_loops() > static_cast<uint32_t>(limits_.num_loops))) {
    return FieldError(
        "sampling.exit_min_loops",
        absl::StrCat("must be in [1, ", limits_.num_loops,
                     "] (the model's loops), got ", s.exit_min_loops()));
  }
  if (!v1::ExitConfidence_IsValid(s.exit_confidence())) {
    return FieldError("sampling.exit_confidence",
                      absl::StrCat("unknown value ", s.exit_confidence()));
  }
  if (s.has_exit_confidence() &&
      s.exit_confidence() == v1::EXIT_CONFIDENCE_CLASSIFIER &&
      !limits_.has_exit_classifier) {
    return FieldError("sampling.exit_confidence",
                      "EXIT_CONFIDENCE_CLASSIFIER needs a model with an exit "
                      "classifier (config.json \"exit_classifier\"); this "
                      "one has none");
  }
  if (s.has_n() && (s.n() < 1 || s.n() > static_cast<uint32_t>(kMaxChoices))) {
    return FieldError("sampling.n", absl::StrCat("must be in [1, ", kMaxChoices,
                                                 "], got ", s.n()));
  }
  if (s.top_logprobs() > static_cast<uint32_t>(kMaxTopLogprobs)) {
    return FieldError("sampling.top_logprobs",
                      absl::StrCat("must be in [0, ", kMaxTopLogprobs,
                                   "], got ", s.top_logprobs()));
  }
  if (s.top_logprobs() > 0 && !s.logprobs()) {
    return FieldError("sampling.top_logprobs",
                      "needs sampling.logprobs = true");
  }
  if (s.stop_token_ids_size() > kMaxStopTokenIds) {
    return FieldError("sampling.stop_token_ids",
                      absl::StrCat("at most ", kMaxStopTokenIds, " ids, got ",
                                   s.stop_token_ids_size()));
  }
  if (s.stop_size() > kMaxStopStrings) {
    return FieldError("sampling.stop",
                      absl::StrCat("at most ", kMaxStopStrings,
                                   " stop strings, got ", s.stop_size()));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    const std::string field = absl::StrCat("sampling.stop[", i, "]");
    if (s.stop(i).empty()) return FieldError(field, "must not be empty");
    if (s.stop(i).size() > static_cast<size_t>(kMaxStopStringBytes)) {
      return FieldError(field, absl::StrCat("at most ", kMaxStopStringBytes,
                                            " bytes, got ", s.stop(i).size()));
    }
    if (absl::Status st = CheckUtf8(s.stop(i), field); !st.ok()) return st;
  }
  return ValidateTokenIds(std::span<const int32_t>(s.stop_token_ids().data(),
                                                   s.stop_token_ids().size()),
                          "sampling.stop_token_ids");
}

absl::Status RequestValidator::ValidateTokenIds(std::span<const int32_t> ids,
                                                std::string_view field) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= limits_.vocab_size) {
      return FieldError(
          absl::StrCat(std::string(field), "[", i, "]"),
          absl::StrCat(ids[i], " is outside the vocabulary (size ",
                       limits_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::ValidateTokenIdList(
    std::span<const int32_t> ids, std::string_view field) const {
  if (ids.size() > static_cast<size_t>(limits_.max_model_len)) {
    return FieldError(
        std::string(field),
        absl::StrCat(ids.size(), " ids, more than the context length ",
                     limits_.max_model_len));
  }
  return ValidateTokenIds(ids, field);
}

absl::Status RequestValidator::CheckPromptBytes(size_t bytes,
                                                absl::string_view field) const {
  if (bytes > static_cast<uint64_t>(limits_.max_prompt_bytes)) {
    return FieldError(field,
                      absl::StrCat(bytes, " bytes, more than the limit of ",
                                   limits_.max_prompt_bytes,
                                   " (--max_prompt_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::ValidatePromptLength(size_t num_tokens) const {
  if (num_tokens == 0) return FieldError("prompt", "no tokens");
  if (num_tokens >= static_cast<size_t>(limits_.max_model_len)) {
    return FieldError(
        "prompt", absl::StrCat(num_tokens, " tokens exceed the context length ",
                               limits_.max_model_len, " (at most ",
                               limits_.max_model_len - 1,
                               " prompt tokens leave room to generate)"));
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::ValidateCompletion(
    const v1::CompletionRequest& request) const {
  switch (request.prompt_case()) {
    case v1::CompletionRequest::kText:
      if (request.text().empty()) {
        return FieldError("prompt.text", "must not be empty");
      }
      if (absl::Status st = CheckPromptBytes(request.text().size(),
                                             "prompt.text");
          !st.ok()) {
        return st;
      }
      if (absl::Status st = CheckUtf8(request.text(), "prompt.text");
          !st.ok()) {
        return st;
      }
      break;
    case v1::CompletionRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) {
        return FieldError("prompt.token_ids", "must not be empty");
      }
      // The length first: a list too long is refused without reading it.
      if (absl::Status st = ValidatePromptLength(ids.size()); !st.ok()) {
        return st;
      }
      if (absl::Status st =
              ValidateTokenIds(std::span<const int32_t>(ids.data(), ids.size()),
                               "prompt.token_ids");
          !st.ok()) {
        return st;
      }
      break;
    }
    case v1::CompletionRequest::PROMPT_NOT_SET:
      return FieldError("prompt", "must be set (text or token_ids)");
  }
  return ValidateSampling(request.sampling());
}

absl::Status RequestValidator::ValidateChat(
    const v1::ChatRequest& request) const {
  if (request.messages().empty()) {
    return FieldError("messages", "must not be empty");
  }
  if (request.messages_size() > kMaxMessages) {
    return FieldError("messages", absl::StrCat("at most ", kMaxMessages,
                                               " messages, got ",
                                               request.messages_size()));
  }
  size_t content_bytes = 0;
  for (const v1::ChatMessage& message : request.messages()) {
    content_bytes += message.content().size() + message.role().size();
  }
  if (absl::Status st = CheckPromptBytes(content_bytes, "messages");
      !st.ok()) {
    return st;
  }
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::ChatMessage& message = request.messages(i);
    const std::string role_field = absl::StrCat("messages[", i, "].role");
    if (absl::Status st = CheckUtf8(message.role(), role_field); !st.ok()) {
      return st;
    }
    if (!IsKnownRole(message.role())) {
      return FieldError(
          role_field, absl::StrCat("unknown role \"", message.role(),
                                   "\" (expected system, user or assistant)"));
    }
    if (absl::Status st = CheckUtf8(message.content(),
                                    absl::StrCat("messages[", i, "].content"));
        !st.ok()) {
      return st;
    }
  }
  if (!request.chat_template().empty()) {
    if (request.chat_template().size() >
        static_cast<size_t>(kMaxChatTemplateBytes)) {
      return FieldError("chat_template",
                        absl::StrCat("at most ", kMaxChatTemplateBytes,
                                     " bytes, got ",
                                     request.chat_template().size()));
    }
    if (absl::Status st = CheckUtf8(request.chat_template(), "chat_template");
        !st.ok()) {
      return st;
    }
    if (!ParseChatFormat(request.chat_template()).ok()) {
      return FieldError(
          "chat_template",
          absl::StrCat("unknown format \"", request.chat_template(),
                       "\" (expected llama3, chatml or mistral)"));
    }
  }
  return ValidateSampling(request.sampling());
}

absl::Status RequestValidator::ValidateTokenize(
    const v1::TokenizeRequest& request) const {
  if (absl::Status st = CheckPromptBytes(request.text().size(), "text");
      !st.ok()) {
    return st;
  }
  return CheckUtf8(request.text(), "text");
}

absl::Status RequestValidator::ValidateDetokenize(
    const v1::DetokenizeRequest& request) const {
  return ValidateTokenIdList(
      std::span<const int32_t>(request.token_ids().data(),
                               request.token_ids().size()),
      "token_ids");
}

}  // namespace strata
