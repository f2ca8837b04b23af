#include "server/request_validator.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int32_t kVocab = 1029;
constexpr int32_t kMaxModelLen = 64;

class RequestValidatorTest : public ::testing::Test {
 protected:
  RequestValidator validator_{RequestValidator::Limits{
      .vocab_size = kVocab, .max_model_len = kMaxModelLen}};

  // The error for `sampling` inside an otherwise valid completion request.
  absl::Status SamplingError(const v1::SamplingParams& sampling) {
    v1::CompletionRequest request;
    request.set_text("hello");
    *request.mutable_sampling() = sampling;
    return validator_.ValidateCompletion(request);
  }
};

// Asserts INVALID_ARGUMENT whose message starts with the field's name.
void ExpectFieldError(const absl::Status& status, const std::string& field,
                      const std::string& detail = "") {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), StartsWith(field + ": "));
  if (!detail.empty()) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(detail));
  }
}

TEST_F(RequestValidatorTest, AcceptsAWellFormedCompletion) {
  v1::CompletionRequest request;
  request.set_text("Once upon a time");
  v1::SamplingParams* s = request.mutable_sampling();
  s->set_max_tokens(16);
  s->set_temperature(0.7f);
  s->set_top_k(40);
  s->set_top_p(0.9f);
  s->set_min_p(0.05f);
  s->set_repetition_penalty(1.1f);
  s->set_presence_penalty(-2.0f);
  s->set_frequency_penalty(2.0f);
  s->set_logprobs(true);
  s->set_top_logprobs(20);
  s->add_stop("\n\n");
  s->add_stop_token_ids(kVocab - 1);
  EXPECT_TRUE(validator_.ValidateCompletion(request).ok());
}

TEST_F(RequestValidatorTest, EmptyPrompt) {
  v1::CompletionRequest request;
  ExpectFieldError(validator_.ValidateCompletion(request), "prompt",
                   "must be set");
  request.set_text("");
  ExpectFieldError(validator_.ValidateCompletion(request), "prompt.text",
                   "must not be empty");
  request.mutable_token_ids();
  ExpectFieldError(validator_.ValidateCompletion(request), "prompt.token_ids",
                   "must not be empty");
}

TEST_F(RequestValidatorTest, PromptIdsOutsideTheVocabulary) {
  v1::CompletionRequest request;
  for (int id : {1, 2, 3, 99999}) request.mutable_token_ids()->add_ids(id);
  const absl::Status status = validator_.ValidateCompletion(request);
  ExpectFieldError(status, "prompt.token_ids[3]");
  EXPECT_EQ(status.message(),
            "prompt.token_ids[3]: 99999 is outside the vocabulary (size 1029)");
  request.mutable_token_ids()->set_ids(3, -1);
  ExpectFieldError(validator_.ValidateCompletion(request),
                   "prompt.token_ids[3]", "-1 is outside");
}

TEST_F(RequestValidatorTest, PromptLongerThanTheContext) {
  EXPECT_TRUE(validator_.ValidatePromptLength(kMaxModelLen - 1).ok());
  const absl::Status status = validator_.ValidatePromptLength(kMaxModelLen);
  ExpectFieldError(status, "prompt", "64 tokens exceed the context length 64");
  ExpectFieldError(validator_.ValidatePromptLength(5000), "prompt",
                   "5000 tokens exceed the context length 64");
  ExpectFieldError(validator_.ValidatePromptLength(0), "prompt", "no tokens");

  v1::CompletionRequest request;
  for (int i = 0; i < kMaxModelLen; ++i)
    request.mutable_token_ids()->add_ids(1);
  ExpectFieldError(validator_.ValidateCompletion(request), "prompt");
}

TEST_F(RequestValidatorTest, MaxTokens) {
  v1::SamplingParams s;
  s.set_max_tokens(0);
  ExpectFieldError(SamplingError(s), "sampling.max_tokens", "at least 1");
  s.set_max_tokens(1);
  EXPECT_TRUE(SamplingError(s).ok());
}

TEST_F(RequestValidatorTest, NumberOfChoices) {
  v1::SamplingParams s;
  s.set_n(0);
  ExpectFieldError(SamplingError(s), "sampling.n", "[1, 16], got 0");
  s.set_n(17);
  ExpectFieldError(SamplingError(s), "sampling.n", "got 17");
  for (uint32_t n : {1u, 4u, 16u}) {
    s.set_n(n);
    EXPECT_TRUE(SamplingError(s).ok()) << n;
  }
  // Greedy choices are allowed (all the same, as in vLLM).
  s.set_temperature(0.0f);
  EXPECT_TRUE(SamplingError(s).ok());
}

TEST_F(RequestValidatorTest, Temperature) {
  v1::SamplingParams s;
  s.set_temperature(-1.0f);
  EXPECT_EQ(SamplingError(s).message(),
            "sampling.temperature: must be in [0, 100], got -1");
  s.set_temperature(100.5f);
  ExpectFieldError(SamplingError(s), "sampling.temperature");
  s.set_temperature(std::nanf(""));
  ExpectFieldError(SamplingError(s), "sampling.temperature", "nan");
  for (float ok : {0.0f, 1.0f, 100.0f}) {
    s.set_temperature(ok);
    EXPECT_TRUE(SamplingError(s).ok()) << ok;
  }
}

TEST_F(RequestValidatorTest, TopKTopPMinP) {
  v1::SamplingParams s;
  s.set_top_k(-1);
  ExpectFieldError(SamplingError(s), "sampling.top_k", "got -1");
  s.clear_top_k();

  for (float bad : {0.0f, -0.5f, 1.01f, std::nanf("")}) {
    s.set_top_p(bad);
    ExpectFieldError(SamplingError(s), "sampling.top_p", "(0, 1]");
  }
  s.set_top_p(1.0f);
  EXPECT_TRUE(SamplingError(s).ok());

  for (float bad : {-0.01f, 1.5f, std::nanf("")}) {
    s.set_min_p(bad);
    ExpectFieldError(SamplingError(s), "sampling.min_p", "[0, 1]");
  }
  s.set_min_p(0.0f);
  EXPECT_TRUE(SamplingError(s).ok());
}

TEST_F(RequestValidatorTest, Penalties) {
  v1::SamplingParams s;
  for (float bad : {0.0f, -1.0f, 10.5f}) {
    s.set_repetition_penalty(bad);
    ExpectFieldError(SamplingError(s), "sampling.repetition_penalty",
                     "(0, 10]");
  }
  s.set_repetition_penalty(10.0f);
  EXPECT_TRUE(SamplingError(s).ok());

  for (float bad : {-2.5f, 2.5f, std::numeric_limits<float>::infinity()}) {
    v1::SamplingParams p;
    p.set_presence_penalty(bad);
    ExpectFieldError(SamplingError(p), "sampling.presence_penalty", "[-2, 2]");
    v1::SamplingParams f;
    f.set_frequency_penalty(bad);
    ExpectFieldError(SamplingError(f), "sampling.frequency_penalty", "[-2, 2]");
  }
}

TEST_F(RequestValidatorTest, Logprobs) {
  v1::SamplingParams s;
  s.set_logprobs(true);
  s.set_top_logprobs(21);
  ExpectFieldError(SamplingError(s), "sampling.top_logprobs",
                   "[0, 20], got 21");
  s.set_top_logprobs(5);
  s.set_logprobs(false);
  ExpectFieldError(SamplingError(s), "sampling.top_logprobs",
                   "sampling.logprobs");
}

TEST_F(RequestValidatorTest, StopStrings) {
  v1::SamplingParams s;
  s.add_stop("ok");
  s.add_stop("");
  ExpectFieldError(SamplingError(s), "sampling.stop[1]", "must not be empty");

  v1::SamplingParams utf8;
  utf8.add_stop("fine");
  utf8.add_stop("ab\xC3");  // a truncated two-byte character
  ExpectFieldError(SamplingError(utf8), "sampling.stop[1]",
                   "invalid UTF-8 at byte 2");

  v1::SamplingParams many;
  for (int i = 0; i < RequestValidator::kMaxStopStrings + 1; ++i) {
    many.add_stop(std::string("x"));
  }
  ExpectFieldError(SamplingError(many), "sampling.stop",
                   "at most 16 stop strings, got 17");
}

TEST_F(RequestValidatorTest, StopTokenIds) {
  v1::SamplingParams s;
  s.add_stop_token_ids(5);
  s.add_stop_token_ids(kVocab);
  EXPECT_EQ(SamplingError(s).message(),
            "sampling.stop_token_ids[1]: 1029 is outside the vocabulary "
            "(size 1029)");
}

TEST_F(RequestValidatorTest, InvalidUtf8Text) {
  v1::CompletionRequest request;
  request.set_text("caf\xC3\xA9 \xFF");
  ExpectFieldError(validator_.ValidateCompletion(request), "prompt.text",
                   "invalid UTF-8 at byte 6");
  v1::TokenizeRequest tokenize;
  tokenize.set_text("\xE2\x82");
  ExpectFieldError(validator_.ValidateTokenize(tokenize), "text",
                   "invalid UTF-8");
}

TEST_F(RequestValidatorTest, Chat) {
  v1::ChatRequest request;
  ExpectFieldError(validator_.ValidateChat(request), "messages",
                   "must not be empty");

  v1::ChatMessage* system = request.add_messages();
  system->set_role("system");
  system->set_content("Be brief.");
  v1::ChatMessage* user = request.add_messages();
  user->set_role("user");
  user->set_content("Hi");
  EXPECT_TRUE(validator_.ValidateChat(request).ok());

  user->set_role("bot");
  EXPECT_EQ(validator_.ValidateChat(request).message(),
            "messages[1].role: unknown role \"bot\" (expected system, user or "
            "assistant)");
  user->set_role("user");

  user->set_content("\xC0\x80");  // overlong encoding of NUL
  ExpectFieldError(validator_.ValidateChat(request), "messages[1].content",
                   "invalid UTF-8");
  user->set_content("Hi");

  request.set_chat_template("jinja");
  ExpectFieldError(validator_.ValidateChat(request), "chat_template",
                   "unknown format \"jinja\"");
  for (const char* name : {"llama3", "chatml", "mistral"}) {
    request.set_chat_template(name);
    EXPECT_TRUE(validator_.ValidateChat(request).ok()) << name;
  }

  request.mutable_sampling()->set_top_k(-3);
  ExpectFieldError(validator_.ValidateChat(request), "sampling.top_k");
}

TEST_F(RequestValidatorTest, Detokenize) {
  v1::DetokenizeRequest request;
  request.add_token_ids(0);
  request.add_token_ids(kVocab - 1);
  EXPECT_TRUE(validator_.ValidateDetokenize(request).ok());
  request.add_token_ids(kVocab + 5);
  EXPECT_EQ(validator_.ValidateDetokenize(request).message(),
            "token_ids[2]: 1034 is outside the vocabulary (size 1029)");
}

// Every variable-size field has a byte or count limit, checked before any
// work, and the error names the field.
TEST_F(RequestValidatorTest, StopStringsAreLimitedInBytes) {
  v1::SamplingParams sampling;
  sampling.add_stop("ok");
  sampling.add_stop(std::string(RequestValidator::kMaxStopStringBytes + 1, 'x'));
  ExpectFieldError(SamplingError(sampling), "sampling.stop[1]", "bytes");
  sampling.mutable_stop()->RemoveLast();
  sampling.add_stop(std::string(RequestValidator::kMaxStopStringBytes, 'x'));
  EXPECT_TRUE(SamplingError(sampling).ok());
}

TEST_F(RequestValidatorTest, StopTokenIdsAreLimitedInCount) {
  v1::SamplingParams sampling;
  for (int i = 0; i <= RequestValidator::kMaxStopTokenIds; ++i) {
    sampling.add_stop_token_ids(1);
  }
  ExpectFieldError(SamplingError(sampling), "sampling.stop_token_ids",
                   "at most");
}

TEST_F(RequestValidatorTest, PromptTextIsLimitedInBytesBeforeTokenizing) {
  RequestValidator small(RequestValidator::Limits{
      .vocab_size = kVocab, .max_model_len = kMaxModelLen,
      .max_prompt_bytes = 100});
  v1::CompletionRequest completion;
  completion.set_text(std::string(101, 'a'));
  ExpectFieldError(small.ValidateCompletion(completion), "prompt.text",
                   "--max_prompt_bytes");
  completion.set_text(std::string(100, 'a'));
  EXPECT_TRUE(small.ValidateCompletion(completion).ok());

  v1::ChatRequest chat;
  for (int i = 0; i < 3; ++i) {
    v1::ChatMessage* message = chat.add_messages();
    message->set_role("user");
    message->set_content(std::string(40, 'a'));  // 3 x 44 > 100
  }
  ExpectFieldError(small.ValidateChat(chat), "messages", "bytes");

  v1::TokenizeRequest tokenize;
  tokenize.set_text(std::string(101, 'a'));
  ExpectFieldError(small.ValidateTokenize(tokenize), "text", "bytes");
}

TEST_F(RequestValidatorTest, ChatMessagesAndTemplateNameAreLimited) {
  v1::ChatRequest chat;
  for (int i = 0; i <= RequestValidator::kMaxMessages; ++i) {
    v1::ChatMessage* message = chat.add_messages();
    message->set_role("user");
  }
  ExpectFieldError(validator_.ValidateChat(chat), "messages", "at most");
  chat.mutable_messages()->DeleteSubrange(1, chat.messages_size() - 1);
  chat.set_chat_template(
      std::string(RequestValidator::kMaxChatTemplateBytes + 1, 'l'));
  ExpectFieldError(validator_.ValidateChat(chat), "chat_template", "bytes");
}

TEST_F(RequestValidatorTest, DetokenizeIdsAreLimitedToTheContext) {
  v1::DetokenizeRequest request;
  for (int i = 0; i <= kMaxModelLen; ++i) request.add_token_ids(1);
  ExpectFieldError(validator_.ValidateDetokenize(request), "token_ids",
                   "context length");
}

}  // namespace
}  // namespace strata
