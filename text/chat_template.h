// Built-in chat prompt formats (Llama 3, ChatML, Mistral).
//
// Strata does not run Jinja: tokenizer_config.json's chat_template source is
// only used to pick one of these formats (DetectChatFormat), each rendered
// here to the exact text the family's official template produces. See
// docs/chat-templates.md.
//
// Threading: a ChatTemplate is immutable; Render is safe from any thread.
#ifndef STRATA_TEXT_CHAT_TEMPLATE_H_
#define STRATA_TEXT_CHAT_TEMPLATE_H_

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "text/tokenizer.h"

namespace strata {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { kLlama3, kChatML, kMistral };

// "llama3" | "chatml" | "mistral"; INVALID_ARGUMENT otherwise.
absl::StatusOr<ChatFormat> ParseChatFormat(std::string_view name);
std::string_view ChatFormatName(ChatFormat format);

// Chooses the format from a tokenizer_config.json chat_template source by its
// markers (<|start_header_id|> => llama3, <|im_start|> => chatml, [INST] =>
// mistral, checked in that order); NOT_FOUND otherwise.
absl::StatusOr<ChatFormat> DetectChatFormat(std::string_view template_source);

class ChatTemplate {
 public:
  // Takes the special-token texts the format needs from `tokenizer` (which
  // need not outlive the template). INVALID_ARGUMENT when the tokenizer lacks
  // them (e.g. chatml on a tokenizer without <|im_start|>).
  // ChatML: when the tokenizer's own chat_template injects a default system
  // message for conversations that have none (as Qwen2's does:
  // "You are a helpful assistant."), that literal message is extracted and
  // rendered the same way.
  static absl::StatusOr<ChatTemplate> Create(ChatFormat format,
                                             const Tokenizer& tokenizer);

  // Renders messages to prompt text (special tokens as text, e.g.
  // "<|begin_of_text|>", which Encode recognises; encode the result with
  // add_special_tokens=false). Roles: system, user, assistant; anything else
  // => INVALID_ARGUMENT "messages[i].role: unknown role \"x\"". Empty list =>
  // INVALID_ARGUMENT "messages: empty". Content that is not UTF-8 =>
  // INVALID_ARGUMENT "messages[i].content: not valid UTF-8". Mistral: system
  // folded into the first user turn; user/assistant must alternate
  // (INVALID_ARGUMENT naming the index otherwise); it has no generation prompt
  // (the text after " [/INST]" is the reply).
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt = true) const;

  ChatFormat format() const { return format_; }
  // ChatML only: the system message used when none is given ("" = none).
  const std::string& default_system_prompt() const {
    return default_system_prompt_;
  }

 private:
  ChatTemplate(ChatFormat format, std::string bos, std::string eos,
               std::string default_system_prompt);

  std::string RenderLlama3(std::span<const ChatMessage> messages,
                           bool add_generation_prompt) const;
  std::string RenderChatML(std::span<const ChatMessage> messages,
                           bool add_generation_prompt) const;
  absl::StatusOr<std::string> RenderMistral(
      std::span<const ChatMessage> messages) const;

  ChatFormat format_;
  std::string bos_;  // BOS token text ("" if the model has none)
  std::string eos_;  // EOS token text (Mistral)
  std::string default_system_prompt_;
};

}  // namespace strata

#endif  // STRATA_TEXT_CHAT_TEMPLATE_H_
