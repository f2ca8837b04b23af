#include "server/openai_response.h"

#include <span>
#include <utility>

namespace strata {
namespace {

using Json = nlohmann::json;

Json Bytes(const std::string& text) {
  Json bytes = Json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

Json FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return nullptr;
  }
}

std::string DumpJson(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json OpenAiRenderer::Usage(const v1::Usage& usage) {
  return Json{
      {"prompt_tokens", usage.prompt_tokens()},
      {"completion_tokens", usage.completion_tokens()},
      {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()},
      {"prompt_tokens_details",
       {{"cached_tokens", usage.cached_prompt_tokens()}}}};
}

Json OpenAiRenderer::Envelope(const char* object) const {
  return Json{{"id", options_.id},
              {"object", object},
              {"created", options_.created},
              {"model", options_.model},
              {"system_fingerprint", options_.system_fingerprint}};
}

std::string OpenAiRenderer::TokenText(int32_t id) const {
  return options_.tokenizer->Decode(std::span<const TokenId>(&id, 1),
                                    /*skip_special_tokens=*/false);
}

void OpenAiRenderer::Touch(uint32_t index) {
  if (role_sent_.size() <= index) {
    role_sent_.resize(index + 1, false);
    text_offset_.resize(index + 1, 0);
  }
}

Json OpenAiRenderer::Logprobs(
    uint32_t index,
    const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& logprobs) {
  Touch(index);
  if (options_.endpoint == OpenAiEndpoint::kChatCompletions) {
    Json content = Json::array();
    for (const v1::TokenLogprob& lp : logprobs) {
      const std::string text = TokenText(lp.token_id());
      Json top = Json::array();
      for (const v1::TopLogprob& alt : lp.top()) {
        top.push_back({{"token", alt.text()},
                       {"logprob", alt.logprob()},
                       {"bytes", Bytes(alt.text())}});
      }
      content.push_back({{"token", text},
                         {"logprob", lp.logprob()},
                         {"bytes", Bytes(text)},
                         {"top_logprobs", std::move(top)}});
    }
    return Json{{"content", std::move(content)}};
  }
  Json tokens = Json::array();
  Json token_logprobs = Json::array();
  Json top_logprobs = Json::array();
  Json offsets = Json::array();
  for (const v1::TokenLogprob& lp : logprobs) {
    const std::string text = TokenText(lp.token_id());
    offsets.push_back(text_offset_[index]);
    text_offset_[index] += static_cast<int64_t>(text.size());
    tokens.push_back(text);
    token_logprobs.push_back(lp.logprob());
    Json top = Json::object();
    for (const v1::TopLogprob& alt : lp.top()) top[alt.text()] = alt.logprob();
    top_logprobs.push_back(std::move(top));
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top_logprobs)},
              {"text_offset", std::move(offsets)}};
}

Json OpenAiRenderer::Unary(const v1::CompletionResponse& result,
                           const v1::Usage& usage) {
  const bool chat = options_.endpoint == OpenAiEndpoint::kChatCompletions;
  Json out = Envelope(chat ? "chat.completion" : "text_completion");
  Json choices = Json::array();
  for (const v1::Choice& choice : result.choices()) {
    Json c = {{"index", choice.index()},
              {"finish_reason", FinishReasonJson(choice.finish_reason())},
              {"logprobs", nullptr}};
    if (chat) {
      c["message"] = {{"role", "assistant"}, {"content", choice.text()}};
    } else {
      c["text"] = choice.text();
    }
    if (options_.logprobs)
      c["logprobs"] = Logprobs(choice.index(), choice.logprobs());
    if (options_.return_token_ids) c["token_ids"] = choice.token_ids();
    // vLLM's field: the stop string or token that ended the choice.
    c["stop_reason"] = choice.stop_reason().empty()
                           ? Json(nullptr)
                           : Json(choice.stop_reason());
    choices.push_back(std::move(c));
  }
  out["choices"] = std::move(choices);
  out["usage"] = Usage(usage);
  return out;
}

Json OpenAiRenderer::Chunk(const v1::CompletionChunk& chunk) {
  const bool chat = options_.endpoint == OpenAiEndpoint::kChatCompletions;
  const uint32_t index = chunk.index();
  Touch(index);
  Json out = Envelope(chat ? "chat.completion.chunk" : "text_completion");
  Json c = {{"index", index},
            {"finish_reason", FinishReasonJson(chunk.finish_reason())},
            {"logprobs", nullptr}};
  if (chat) {
    Json delta = Json::object();
    if (!role_sent_[index]) {
      delta["role"] = "assistant";
      role_sent_[index] = true;
    }
    if (!chunk.text().empty() || delta.contains("role")) {
      delta["content"] = chunk.text();
    }
    c["delta"] = std::move(delta);
  } else {
    c["text"] = chunk.text();
  }
  if (options_.logprobs && chunk.logprobs_size() > 0) {
    c["logprobs"] = Logprobs(index, chunk.logprobs());
  }
  if (options_.return_token_ids) c["token_ids"] = chunk.token_ids();
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    c["stop_reason"] =
        chunk.stop_reason().empty() ? Json(nullptr) : Json(chunk.stop_reason());
  }
  out["choices"] = Json::array({std::move(c)});
  if (options_.include_usage) out["usage"] = nullptr;
  return out;
}

Json OpenAiRenderer::UsageChunk(const v1::Usage& usage) const {
  Json out = Envelope(options_.endpoint == OpenAiEndpoint::kChatCompletions
                          ? "chat.completion.chunk"
                          : "text_completion");
  out["choices"] = Json::array();
  out["usage"] = Usage(usage);
  return out;
}

}  // namespace strata
