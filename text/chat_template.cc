#include "text/chat_template.h"

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace strata {
namespace {

// absl::string_view is not std::string_view in this abseil build.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

constexpr std::string_view kLlama3StartHeader = "<|start_header_id|>";
constexpr std::string_view kLlama3EndHeader = "<|end_header_id|>";
constexpr std::string_view kLlama3EndOfTurn = "<|eot_id|>";
constexpr std::string_view kChatMLStart = "<|im_start|>";
constexpr std::string_view kChatMLEnd = "<|im_end|>";
constexpr std::string_view kMistralInstMarker = "[INST]";

// Python's str.isspace() characters: what Jinja's |trim strips.
bool IsPythonSpace(char32_t c) {
  return IsUnicodeWhiteSpace(c) || (c >= 0x1C && c <= 0x1F);
}

// Jinja's `|trim` (Python str.strip()) on well-formed UTF-8.
std::string_view JinjaTrim(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t next = begin;
    if (!IsPythonSpace(DecodeUtf8At(text, &next))) break;
    begin = next;
  }
  size_t end = text.size();
  while (end > begin) {
    const size_t start =
        std::max(begin, Utf8BoundaryAtOrBefore(text, end - 1));
    size_t next = start;
    if (!IsPythonSpace(DecodeUtf8At(text, &next))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

// Checks the list is not empty, every role and that content is UTF-8.
absl::Status ValidateMessages(std::span<const ChatMessage> messages) {
  if (messages.empty()) return absl::InvalidArgumentError("messages: empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role: unknown role \"", Utf8Lossy(role), "\""));
    }
    if (!IsValidUtf8(messages[i].content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content: not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

// ChatML templates such as Qwen2's open conversations that lack a system
// message with a fixed one:
//   {% if loop.first and messages[0]['role'] != 'system' %}
//   {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
// Returns that literal text when the source has exactly one such plain
// literal (no Jinja expressions, quotes or escapes inside) and tests for a
// missing system message; "" otherwise.
std::string FindChatMLDefaultSystemPrompt(std::string_view source) {
  if (source.find("!= 'system'") == std::string_view::npos &&
      source.find("!= \"system\"") == std::string_view::npos) {
    return "";
  }
  std::optional<std::string> found;
  for (std::string_view newline :
       {std::string_view("\n"), std::string_view("\\n")}) {
    for (char quote : {'\'', '"'}) {
      const std::string marker =
          absl::StrCat(std::string(1, quote), AsAbsl(kChatMLStart), "system",
                       AsAbsl(newline));
      size_t pos = 0;
      while ((pos = source.find(marker, pos)) != std::string_view::npos) {
        pos += marker.size();
        const size_t end = source.find(kChatMLEnd, pos);
        if (end == std::string_view::npos) break;
        const std::string_view text = source.substr(pos, end - pos);
        if (text.empty() ||
            text.find_first_of("'\"{}\\") != std::string_view::npos) {
          continue;
        }
        if (found.has_value() && *found != text) return "";  // ambiguous
        found = std::string(text);
      }
    }
  }
  return found.value_or("");
}

}  // namespace

absl::StatusOr<ChatFormat> ParseChatFormat(std::string_view name) {
  if (name == "llama3") return ChatFormat::kLlama3;
  if (name == "chatml") return ChatFormat::kChatML;
  if (name == "mistral") return ChatFormat::kMistral;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat format \"", AsAbsl(name),
                   "\" (expected llama3, chatml or mistral)"));
}

std::string_view ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kChatML:
      return "chatml";
    case ChatFormat::kMistral:
      return "mistral";
  }
  return "unknown";
}

absl::StatusOr<ChatFormat> DetectChatFormat(std::string_view template_source) {
  if (template_source.find(kLlama3StartHeader) != std::string_view::npos) {
    return ChatFormat::kLlama3;
  }
  if (template_source.find(kChatMLStart) != std::string_view::npos) {
    return ChatFormat::kChatML;
  }
  if (template_source.find(kMistralInstMarker) != std::string_view::npos) {
    return ChatFormat::kMistral;
  }
  return absl::NotFoundError(
      template_source.empty()
          ? "the model has no chat_template; choose a chat format "
            "(llama3, chatml or mistral) explicitly"
          : "the model's chat_template is not one of the built-in formats "
            "(llama3, chatml, mistral); choose one explicitly");
}

ChatTemplate::ChatTemplate(ChatFormat format, std::string bos, std::string eos,
                           std::string default_system_prompt)
    : format_(format),
      bos_(std::move(bos)),
      eos_(std::move(eos)),
      default_system_prompt_(std::move(default_system_prompt)) {}

absl::StatusOr<ChatTemplate> ChatTemplate::Create(ChatFormat format,
                                                  const Tokenizer& tokenizer) {
  auto require = [&](std::string_view token) -> absl::Status {
    if (tokenizer.TokenToId(token).has_value()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "chat format ", AsAbsl(ChatFormatName(format)), " needs the token ",
        AsAbsl(token), ", which the tokenizer does not have"));
  };
  std::string bos;
  if (tokenizer.bos_token_id().has_value()) {
    bos = std::string(tokenizer.TokenBytes(*tokenizer.bos_token_id()));
  }
  std::string eos;
  if (!tokenizer.eos_token_ids().empty()) {
    eos = std::string(tokenizer.TokenBytes(tokenizer.eos_token_ids().front()));
  }
  std::string default_system_prompt;
  switch (format) {
    case ChatFormat::kLlama3:
      for (std::string_view token :
           {kLlama3StartHeader, kLlama3EndHeader, kLlama3EndOfTurn}) {
        absl::Status status = require(token);
        if (!status.ok()) return status;
      }
      break;
    case ChatFormat::kChatML:
      for (std::string_view token : {kChatMLStart, kChatMLEnd}) {
        absl::Status status = require(token);
        if (!status.ok()) return status;
      }
      default_system_prompt =
          FindChatMLDefaultSystemPrompt(tokenizer.chat_template_source());
      break;
    case ChatFormat::kMistral:
      if (bos.empty() || eos.empty()) {
        return absl::InvalidArgumentError(
            "chat format mistral needs the tokenizer's bos and eos tokens");
      }
      break;
  }
  return ChatTemplate(format, std::move(bos), std::move(eos),
                      std::move(default_system_prompt));
}

absl::StatusOr<std::string> ChatTemplate::Render(
    std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  absl::Status status = ValidateMessages(messages);
  if (!status.ok()) return status;
  switch (format_) {
    case ChatFormat::kLlama3:
      return RenderLlama3(messages, add_generation_prompt);
    case ChatFormat::kChatML:
      return RenderChatML(messages, add_generation_prompt);
    case ChatFormat::kMistral:
      return RenderMistral(messages);
  }
  return absl::InternalError("unknown chat format");
}

// Llama 3 (Meta-Llama-3-*-Instruct):
//   {% for message in messages %}{% set content = '<|start_header_id|>' +
//   message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim +
//   '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token +
//   content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt
//   %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
std::string ChatTemplate::RenderLlama3(std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out = bos_;
  for (const ChatMessage& message : messages) {
    absl::StrAppend(&out, AsAbsl(kLlama3StartHeader), message.role,
                    AsAbsl(kLlama3EndHeader), "\n\n",
                    AsAbsl(JinjaTrim(message.content)),
                    AsAbsl(kLlama3EndOfTurn));
  }
  if (add_generation_prompt) {
    absl::StrAppend(&out, AsAbsl(kLlama3StartHeader), "assistant",
                    AsAbsl(kLlama3EndHeader), "\n\n");
  }
  return out;
}

// ChatML (Qwen2 and others):
//   {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// preceded, when the model's template has one and messages[0] is not a
// system message, by the default system message.
std::string ChatTemplate::RenderChatML(std::span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out;
  auto append = [&out](std::string_view role, std::string_view content) {
    absl::StrAppend(&out, AsAbsl(kChatMLStart), AsAbsl(role), "\n",
                    AsAbsl(content), AsAbsl(kChatMLEnd), "\n");
  };
  if (!default_system_prompt_.empty() && messages.front().role != "system") {
    append("system", default_system_prompt_);
  }
  for (const ChatMessage& message : messages) {
    append(message.role, message.content);
  }
  if (add_generation_prompt) {
    absl::StrAppend(&out, AsAbsl(kChatMLStart), "assistant\n");
  }
  return out;
}

// Mistral instruct:
//   <s>[INST] {system}\n\n{user} [/INST] {assistant}</s>[INST] {user} [/INST]
// An optional leading system message is folded into the first user turn;
// after it, roles must alternate user, assistant, user, ...
absl::StatusOr<std::string> ChatTemplate::RenderMistral(
    std::span<const ChatMessage> messages) const {
  size_t first = 0;
  std::string_view system;
  if (messages.front().role == "system") {
    system = messages.front().content;
    first = 1;
  }
  if (first == messages.size()) {
    return absl::InvalidArgumentError(
        "messages: the mistral format needs a user message after the system "
        "message");
  }
  std::string out = bos_;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    if (message.role != (expect_user ? "user" : "assistant")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role: expected \"",
          expect_user ? "user" : "assistant", "\", got \"", message.role,
          "\" (the mistral format needs user and assistant turns to "
          "alternate, after an optional first system message)"));
    }
    if (expect_user) {
      absl::StrAppend(&out, "[INST] ");
      if (i == first && first == 1) {
        absl::StrAppend(&out, AsAbsl(system), "\n\n");
      }
      absl::StrAppend(&out, message.content, " [/INST]");
    } else {
      absl::StrAppend(&out, " ", message.content, eos_);
    }
  }
  return out;
}

}  // namespace strata
