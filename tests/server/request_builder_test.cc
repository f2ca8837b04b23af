// RequestBuilder with the real tiny-llama tokenizer (Llama 3 specials,
// llama3 chat template, context 64 here).
#include "server/request_builder.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr int32_t kMaxModelLen = 64;

class RequestBuilderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer = Tokenizer::FromDirectory(std::string(STRATA_SOURCE_DIR) +
                                              "/tests/data/tiny-llama");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  void SetUp() override {
    auto builder = RequestBuilder::Create(
        RequestBuilder::Options{.tokenizer = tokenizer_,
                                .vocab_size = tokenizer_->vocab_size(),
                                .max_model_len = kMaxModelLen,
                                .default_chat_format = ChatFormat::kLlama3});
    ASSERT_TRUE(builder.ok()) << builder.status();
    builder_ = *std::move(builder);
  }

  static Tokenizer* tokenizer_;
  std::unique_ptr<RequestBuilder> builder_;
};

Tokenizer* RequestBuilderTest::tokenizer_ = nullptr;

TEST_F(RequestBuilderTest, TextPromptGetsBosAndDefaults) {
  v1::CompletionRequest request;
  request.set_text("Once upon a time");
  auto prepared = builder_->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  auto expected = tokenizer_->Encode("Once upon a time", true);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(prepared->prompt, *expected);
  EXPECT_EQ(prepared->prompt.front(), *tokenizer_->bos_token_id());
  EXPECT_FLOAT_EQ(prepared->sampling.temperature, 1.0f);
  // 256 by default, capped by the room the 64-token context leaves.
  EXPECT_EQ(prepared->max_tokens,
            kMaxModelLen - static_cast<int32_t>(prepared->prompt.size()));
  EXPECT_THAT(prepared->stop_token_ids,
              UnorderedElementsAre(tokenizer_->eos_token_ids()[0],
                                   tokenizer_->eos_token_ids()[1]));
}

TEST_F(RequestBuilderTest, AddSpecialTokensFalseLeavesOutBos) {
  v1::CompletionRequest request;
  request.set_text("Once upon a time");
  request.set_add_special_tokens(false);
  auto prepared = builder_->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok());
  EXPECT_NE(prepared->prompt.front(), *tokenizer_->bos_token_id());
}

TEST_F(RequestBuilderTest, SamplingAndStopConditions) {
  v1::CompletionRequest request;
  for (int id : {5, 6, 7}) request.mutable_token_ids()->add_ids(id);
  v1::SamplingParams* s = request.mutable_sampling();
  s->set_max_tokens(10);
  s->set_temperature(0.0f);
  s->set_top_k(3);
  s->set_top_p(0.5f);
  s->set_min_p(0.1f);
  s->set_repetition_penalty(1.2f);
  s->set_presence_penalty(0.5f);
  s->set_frequency_penalty(-0.5f);
  s->set_seed(1234);
  s->set_logprobs(true);
  s->set_top_logprobs(4);
  s->set_ignore_eos(true);
  s->add_stop_token_ids(42);
  s->add_stop_token_ids(42);
  s->add_stop("END");
  request.set_priority(3);

  auto prepared = builder_->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_THAT(prepared->prompt, ElementsAre(5, 6, 7));
  EXPECT_EQ(prepared->max_tokens, 10);
  EXPECT_FLOAT_EQ(prepared->sampling.temperature, 0.0f);
  EXPECT_EQ(prepared->sampling.top_k, 3);
  EXPECT_FLOAT_EQ(prepared->sampling.top_p, 0.5f);
  EXPECT_FLOAT_EQ(prepared->sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(prepared->sampling.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(prepared->sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(prepared->sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(prepared->sampling.seed, 1234u);
  EXPECT_EQ(prepared->sampling.num_top_logprobs, 4);
  EXPECT_TRUE(prepared->logprobs);
  // ignore_eos: only the request's own stop ids, once each.
  EXPECT_THAT(prepared->stop_token_ids, ElementsAre(42));
  EXPECT_THAT(prepared->stop_strings, ElementsAre("END"));
  EXPECT_EQ(prepared->priority, 3);
}

TEST_F(RequestBuilderTest, NumberOfChoicesDefaultsToOne) {
  v1::CompletionRequest request;
  request.set_text("x");
  auto one = builder_->BuildCompletion(request);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->n, 1);
  request.mutable_sampling()->set_n(4);
  auto four = builder_->BuildCompletion(request);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(four->n, 4);
  request.mutable_sampling()->set_n(17);
  EXPECT_EQ(builder_->BuildCompletion(request).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RequestBuilderTest, UnsetSeedIsDrawnAtRandom) {
  v1::CompletionRequest request;
  request.set_text("x");
  auto a = builder_->BuildCompletion(request);
  auto b = builder_->BuildCompletion(request);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->sampling.seed, b->sampling.seed);  // 2^-64 to collide
}

TEST_F(RequestBuilderTest, PromptLongerThanContextIsRefused) {
  v1::CompletionRequest request;
  std::string text;
  for (int i = 0; i < kMaxModelLen; ++i) text += " word";
  request.set_text(text);
  auto prepared = builder_->BuildCompletion(request);
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(prepared.status().message()),
              HasSubstr("exceed the context length 64"));
}

TEST_F(RequestBuilderTest, ValidationComesFirst) {
  v1::CompletionRequest request;
  request.set_text("x");
  request.mutable_sampling()->set_temperature(-1.0f);
  EXPECT_EQ(builder_->BuildCompletion(request).status().message(),
            "sampling.temperature: must be in [0, 100], got -1");
}

TEST_F(RequestBuilderTest, ChatRendersTheTemplateWithoutASecondBos) {
  v1::ChatRequest request;
  v1::ChatMessage* message = request.add_messages();
  message->set_role("user");
  message->set_content("Hi");
  auto prepared = builder_->BuildChat(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();

  auto chat_template = ChatTemplate::Create(ChatFormat::kLlama3, *tokenizer_);
  ASSERT_TRUE(chat_template.ok());
  std::vector<ChatMessage> messages = {{"user", "Hi"}};
  auto text = chat_template->Render(messages);
  ASSERT_TRUE(text.ok());
  auto expected = tokenizer_->Encode(*text, /*add_special_tokens=*/false);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(prepared->prompt, *expected);
  EXPECT_EQ(prepared->prompt[0], *tokenizer_->bos_token_id());
  EXPECT_NE(prepared->prompt[1], *tokenizer_->bos_token_id());
}

TEST_F(RequestBuilderTest, ChatWithoutAnyTemplateIsAPreconditionFailure) {
  auto builder = RequestBuilder::Create(
      RequestBuilder::Options{.tokenizer = tokenizer_,
                              .vocab_size = tokenizer_->vocab_size(),
                              .max_model_len = kMaxModelLen,
                              .default_chat_format = std::nullopt});
  ASSERT_TRUE(builder.ok());
  v1::ChatRequest request;
  v1::ChatMessage* message = request.add_messages();
  message->set_role("user");
  message->set_content("Hi");
  const absl::Status status = (*builder)->BuildChat(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("chat_template"));

  request.set_chat_template("llama3");
  EXPECT_TRUE((*builder)->BuildChat(request).ok());
}

TEST_F(RequestBuilderTest, ChatErrorsNameTheField) {
  v1::ChatRequest request;
  EXPECT_EQ(builder_->BuildChat(request).status().message(),
            "messages: must not be empty");
  v1::ChatMessage* message = request.add_messages();
  message->set_role("narrator");
  EXPECT_THAT(std::string(builder_->BuildChat(request).status().message()),
              HasSubstr("messages[0].role"));
}

// Early exit: a request without measure / threshold gets the model's
// defaults (its classifier, the calibrated threshold of the measure); set
// fields override them; the classifier needs a model with one.
TEST_F(RequestBuilderTest, ExitFieldsDefaultToTheModelsCalibration) {
  ExitDefaults defaults;
  defaults.classifier.assign(2 * 9, 0.5f);  // 3 loops, hidden 8
  defaults.thresholds[static_cast<int>(ExitConfidence::kClassifier)] = 0.7f;
  defaults.thresholds[static_cast<int>(ExitConfidence::kMargin)] = 0.3f;
  auto builder = RequestBuilder::Create(
      RequestBuilder::Options{.tokenizer = tokenizer_,
                              .vocab_size = tokenizer_->vocab_size(),
                              .max_model_len = kMaxModelLen,
                              .num_loops = 3,
                              .exit_defaults = defaults,
                              .default_chat_format = ChatFormat::kLlama3});
  ASSERT_TRUE(builder.ok()) << builder.status();
  v1::CompletionRequest request;
  request.set_text("Once");
  auto prepared = (*builder)->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->exit.confidence, ExitConfidence::kClassifier);
  EXPECT_FLOAT_EQ(prepared->exit.threshold, 0.7f);
  request.mutable_sampling()->set_exit_confidence(v1::EXIT_CONFIDENCE_MARGIN);
  prepared = (*builder)->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->exit.confidence, ExitConfidence::kMargin);
  EXPECT_FLOAT_EQ(prepared->exit.threshold, 0.3f);
  request.mutable_sampling()->set_exit_confidence(
      v1::EXIT_CONFIDENCE_SATURATION);  // no calibrated threshold: full depth
  prepared = (*builder)->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->exit.confidence, ExitConfidence::kSaturation);
  EXPECT_FLOAT_EQ(prepared->exit.threshold, 1.0f);
  request.mutable_sampling()->set_exit_threshold(0.9f);
  prepared = (*builder)->BuildCompletion(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_FLOAT_EQ(prepared->exit.threshold, 0.9f);

  // This fixture's builder is a plain model's without a classifier.
  v1::CompletionRequest classifier;
  classifier.set_text("Once");
  classifier.mutable_sampling()->set_exit_confidence(
      v1::EXIT_CONFIDENCE_CLASSIFIER);
  prepared = builder_->BuildCompletion(classifier);
  ASSERT_FALSE(prepared.ok());
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(prepared.status().message(),
              HasSubstr("sampling.exit_confidence"));
  // A plain model has no defaults: full depth.
  v1::CompletionRequest plain;
  plain.set_text("Once");
  prepared = builder_->BuildCompletion(plain);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->exit.confidence, ExitConfidence::kMaxProb);
  EXPECT_FLOAT_EQ(prepared->exit.threshold, 1.0f);
}

}  // namespace
}  // namespace strata
