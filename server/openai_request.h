// OpenAiRequest: an OpenAI-compatible /v1/completions or /v1/chat/completions
// body translated into the protobuf requests the gRPC service receives
// (v1::CompletionRequest, v1::ChatRequest), so that both protocols then go
// through the same RequestBuilder (validation, tokenizing, limits) and the
// same scheduler submission: every check and limit applies once.
//
// This layer only checks what JSON adds: that the body is a JSON object, that
// each known field has the JSON type the API documents (a wrong type is
// INVALID_ARGUMENT naming the field, "temperature: expected a number, got
// string"), and that fields we do not serve (echo, suffix, tools, a
// logit_bias that is not empty) are refused rather than ignored. Ranges are
// the validator's job. Unknown fields are ignored, as OpenAI's SDKs send new
// ones before servers know them.
//
// Threading: pure functions.
#ifndef STRATA_SERVER_OPENAI_REQUEST_H_
#define STRATA_SERVER_OPENAI_REQUEST_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "strata/v1/generation.pb.h"

namespace strata {

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;  // as sent; "" when absent (the served model)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Extension (as vLLM's): each choice also carries its token ids.
  bool return_token_ids = false;
  // Completions: one request per prompt (a list of prompts is a batch, each
  // with its own n choices). Chat: empty.
  std::vector<v1::CompletionRequest> completions;
  v1::ChatRequest chat;  // chat only
  // Choices per prompt (sampling.n, default 1).
  int32_t n = 1;
  // Logprobs asked for (completions: "logprobs": k; chat: "logprobs": true).
  bool logprobs = false;
};

// Parses and translates `body`. Errors are INVALID_ARGUMENT naming the JSON
// field ("body" when it is not a JSON object at all).
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint,
                                                 absl::string_view body);

}  // namespace strata

#endif  // STRATA_SERVER_OPENAI_REQUEST_H_
