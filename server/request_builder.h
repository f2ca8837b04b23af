// Turns a validated-on-the-way Completion or Chat request into what the
// scheduler runs: prompt token ids, engine sampling parameters, the token
// budget and the stop conditions.
//
//   CompletionRequest: validate, then text -> Encode(add_special_tokens),
//                      or token_ids as given
//   ChatRequest:       validate, then ChatTemplate::Render -> Encode(no BOS)
//   both:              prompt length check, sampling defaults, stop conditions
//
// Threading: immutable after Create(); the Build methods are const and safe
// to call from many gRPC threads at once (the tokenizer's Encode is const and
// thread-safe).
#ifndef STRATA_SERVER_REQUEST_BUILDER_H_
#define STRATA_SERVER_REQUEST_BUILDER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/exit_defaults.h"
#include "engine/step.h"
#include "server/request_validator.h"
#include "strata/v1/generation.pb.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace strata {

// A request ready for Scheduler::Submit, less the sink and the deadline.
struct PreparedRequest {
  std::vector<TokenId> prompt;  // [num_prompt_tokens], not empty
  SamplingParams sampling;      // seed always set (random when unset)
  // Requested max_tokens (default 256) capped by the context left after the
  // prompt.
  int32_t max_tokens = 0;
  // The request's stop_token_ids plus the model's EOS ids unless ignore_eos.
  std::vector<TokenId> stop_token_ids;
  std::vector<std::string> stop_strings;
  bool logprobs = false;
  int32_t priority = 0;
  // Choices to sample (sampling.n, default 1); choice i uses sampling.seed
  // + i.
  int32_t n = 1;
  // Early exit (recursive models); threshold 1 = full depth.
  ExitParams exit;
};

class RequestBuilder {
 public:
  // max_tokens when a request leaves it unset.
  static constexpr int32_t kDefaultMaxTokens = 256;

  struct Options {
    const Tokenizer* tokenizer = nullptr;  // borrowed; outlives the builder
    // Token ids must be below this (the smaller of the model's and the
    // tokenizer's vocabulary sizes).
    int32_t vocab_size = 0;
    int32_t max_model_len = 0;
    // Loops of a recursive model (1 = a plain model).
    int32_t num_loops = 1;
    // Most bytes of prompt text (RequestValidator::Limits).
    int64_t max_prompt_bytes = RequestValidator::kDefaultMaxPromptBytes;
    // Recursive models: the early-exit measure and threshold of a request
    // that sets none (its classifier, its calibrated thresholds).
    ExitDefaults exit_defaults = {};
    // The chat format used when a ChatRequest names none; nullopt when the
    // model has no recognisable template (chat then needs chat_template).
    std::optional<ChatFormat> default_chat_format;
  };

  // Fails when the default chat format cannot be built for this tokenizer
  // (e.g. its special tokens are missing).
  static absl::StatusOr<std::unique_ptr<RequestBuilder>> Create(
      const Options& options);

  absl::StatusOr<PreparedRequest> BuildCompletion(
      const v1::CompletionRequest& request) const;
  absl::StatusOr<PreparedRequest> BuildChat(
      const v1::ChatRequest& request) const;

  const RequestValidator& validator() const { return validator_; }
  std::optional<ChatFormat> default_chat_format() const {
    return options_.default_chat_format;
  }

 private:
  explicit RequestBuilder(const Options& options);

  // Tokens past which tokenizing a prompt stops: one more than fits, so the
  // length check still sees that it is too long.
  size_t MaxPromptTokens() const {
    return static_cast<size_t>(options_.max_model_len);
  }

  // Fills everything but the prompt from the sampling parameters, once the
  // prompt is known (its length bounds max_tokens).
  absl::StatusOr<PreparedRequest> Finish(std::vector<TokenId> prompt,
                                         const v1::SamplingParams& sampling,
                                         int32_t priority) const;

  const Options options_;
  const RequestValidator validator_;
  // Indexed by ChatFormat; empty for formats this tokenizer cannot render.
  std::array<std::optional<ChatTemplate>, 3> templates_;
  std::array<absl::Status, 3> template_errors_;
};

}  // namespace strata

#endif  // STRATA_SERVER_REQUEST_BUILDER_H_
