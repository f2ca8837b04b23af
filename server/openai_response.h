// OpenAiRenderer: the JSON an OpenAI-compatible client reads, rendered from
// the protobuf output both protocols share (v1::CompletionChunk from the
// GenerationSink, v1::CompletionResponse gathered from them, v1::Usage).
//
//   unary:  {"id", "object": "text_completion" | "chat.completion",
//            "created", "model", "system_fingerprint", "choices": [...],
//            "usage": {...}}
//   stream: one "text_completion" | "chat.completion.chunk" object per
//           chunk; with include_usage every chunk has "usage": null and a
//           last chunk carries the usage with "choices": [].
//
// Threading: one renderer per HTTP response, used by one thread at a time
// (it keeps per-choice state: whether a chat choice's role was sent, and the
// text offset of completion logprobs).
#ifndef STRATA_SERVER_OPENAI_RESPONSE_H_
#define STRATA_SERVER_OPENAI_RESPONSE_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/openai_request.h"
#include "strata/v1/generation.pb.h"
#include "text/tokenizer.h"

namespace strata {

class OpenAiRenderer {
 public:
  struct Options {
    OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
    std::string id;       // "cmpl-..." or "chatcmpl-..."
    int64_t created = 0;  // Unix seconds
    std::string model;
    std::string system_fingerprint;
    bool logprobs = false;
    bool return_token_ids = false;
    bool include_usage = false;            // streams only
    const Tokenizer* tokenizer = nullptr;  // borrowed: token texts
  };

  explicit OpenAiRenderer(const Options& options) : options_(options) {}

  // The whole answer of a unary request; `result.choices` in index order.
  nlohmann::json Unary(const v1::CompletionResponse& result,
                       const v1::Usage& usage);

  // One stream chunk: a choice's text since its previous chunk, and its
  // finish_reason on its last.
  nlohmann::json Chunk(const v1::CompletionChunk& chunk);

  // The usage chunk that ends a stream with include_usage.
  nlohmann::json UsageChunk(const v1::Usage& usage) const;

  static nlohmann::json Usage(const v1::Usage& usage);

 private:
  nlohmann::json Envelope(const char* object) const;
  // "logprobs" of a choice: the completions shape (tokens, token_logprobs,
  // top_logprobs, text_offset) or the chat shape ({"content": [...]}).
  nlohmann::json Logprobs(
      uint32_t index,
      const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& logprobs);
  std::string TokenText(int32_t id) const;
  // Per-choice state, grown on demand.
  void Touch(uint32_t index);

  const Options options_;
  std::vector<bool> role_sent_;       // chat streams
  std::vector<int64_t> text_offset_;  // completions logprobs
};

// "stop" / "length" / null.
nlohmann::json FinishReasonJson(v1::FinishReason reason);

// Serializes for the wire; invalid UTF-8 (never expected: the sink emits
// whole characters) is replaced rather than thrown on.
std::string DumpJson(const nlohmann::json& json);

}  // namespace strata

#endif  // STRATA_SERVER_OPENAI_RESPONSE_H_
