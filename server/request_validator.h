// Checks request fields before anything is tokenized or queued.
//
// Every error is INVALID_ARGUMENT and starts with the field it is about, in
// the path form clients see in the proto ("sampling.temperature: must be in
// [0, 100], got -1", "prompt.token_ids[3]: 99999 is outside the vocabulary
// (size 1029)", "messages[2].role: unknown role \"bot\" ..."), so a client can
// tell what to fix without reading server logs.
//
// Threading: immutable after construction; every method is const and may be
// called from any number of gRPC threads at once.
#ifndef STRATA_SERVER_REQUEST_VALIDATOR_H_
#define STRATA_SERVER_REQUEST_VALIDATOR_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/step.h"
#include "strata/v1/generation.pb.h"

namespace strata {

class RequestValidator {
 public:
  // Most stop strings a request may carry.
  static constexpr int kMaxStopStrings = 16;
  // Most alternatives per token a request may ask for.
  static constexpr int kMaxTopLogprobs = 20;
  // Most choices (sampling.n) one request may ask for.
  static constexpr int kMaxChoices = 16;
  // Most bytes of one stop string. The sink holds back at most this much
  // text per choice while a stop string may be starting.
  static constexpr int kMaxStopStringBytes = 256;
  // Most stop_token_ids a request may list.
  static constexpr int kMaxStopTokenIds = 64;
  // Most messages of one chat request.
  static constexpr int kMaxMessages = 1024;
  // Most bytes of a chat_template name ("llama3", "chatml", "mistral").
  static constexpr int kMaxChatTemplateBytes = 64;
  // Default of Limits::max_prompt_bytes (--max_prompt_bytes).
  static constexpr int64_t kDefaultMaxPromptBytes = 1 << 20;

  struct Limits {
    // Token ids must be in [0, vocab_size).
    int32_t vocab_size = 0;
    // Prompt plus generated tokens per sequence; a prompt may use at most
    // max_model_len - 1 of them so that one token can be generated.
    int32_t max_model_len = 0;
    // Loops of a recursive model (1 = a plain model): early exit needs
    // more than one, and exit_min_loops may be at most this.
    int32_t num_loops = 1;
    // Most bytes of prompt text: CompletionRequest.text, the sum of a chat
    // request's message contents, TokenizeRequest.text. Checked before any
    // tokenizing, so an oversized prompt costs a length check, not a parse.
    int64_t max_prompt_bytes = kDefaultMaxPromptBytes;
    // Whether the model has an exit classifier (exit_confidence
    // CLASSIFIER needs one).
    bool has_exit_classifier = false;
  };

  explicit RequestValidator(const Limits& limits) : limits_(limits) {}

  // Everything about a completion request that does not need the tokenizer:
  // a prompt is set and not empty, its ids are in the vocabulary, the text is
  // UTF-8, and the sampling parameters are in range.
  absl::Status ValidateCompletion(const v1::CompletionRequest& request) const;

  // Messages present with known roles and UTF-8 content, a known
  // chat_template name (or none), and sampling parameters in range.
  absl::Status ValidateChat(const v1::ChatRequest& request) const;

  // Each field of SamplingParams against the range documented in the proto.
  absl::Status ValidateSampling(const v1::SamplingParams& sampling) const;

  absl::Status ValidateTokenize(const v1::TokenizeRequest& request) const;
  absl::Status ValidateDetokenize(const v1::DetokenizeRequest& request) const;

  // The prompt once tokenized: not empty, and short enough to leave room for
  // one generated token ("prompt: 5000 tokens exceed the context length
  // 4096").
  absl::Status ValidatePromptLength(size_t num_tokens) const;

  // At most max_model_len ids (a longer list cannot be a prompt or an
  // output), each in [0, vocab_size); errors name `field` or `field`[i].
  absl::Status ValidateTokenIdList(std::span<const int32_t> ids,
                                   std::string_view field) const;

  // Every id in [0, vocab_size); errors name `field`[i].
  absl::Status ValidateTokenIds(std::span<const int32_t> ids,
                                std::string_view field) const;

  const Limits& limits() const { return limits_; }

 private:
  // INVALID_ARGUMENT naming `field` when `bytes` exceeds max_prompt_bytes.
  absl::Status CheckPromptBytes(size_t bytes, absl::string_view field) const;

  const Limits limits_;
};

}  // namespace strata

#endif  // STRATA_SERVER_REQUEST_VALIDATOR_H_
