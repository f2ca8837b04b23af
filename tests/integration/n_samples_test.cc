// n > 1 choices through the real daemon: the choices share the prompt's KV
// cache (it is computed once; the prompt's last, partly filled block is
// copied on write) and yet choice i is, token for token, the completion of a
// separate n = 1 request with seed + i. Streaming tags every chunk with its
// choice and ends each choice with its own finish_reason; bad n is refused.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::StratadDaemon;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr uint64_t kSeed = 424242;
// 37 tokens: with 16-token blocks the last prompt token (position 36) lands
// in a block that already holds positions 32..35, the block the choices
// share and copy on write.
constexpr int kPromptTokens = 37;
constexpr uint32_t kMaxTokens = 20;

std::vector<int32_t> Prompt() {
  std::mt19937 rng(20250611);
  std::vector<int32_t> prompt;
  for (int i = 0; i < kPromptTokens; ++i) prompt.push_back(rng() % 1792);
  return prompt;
}

v1::CompletionRequest SampledRequest(uint32_t n, uint64_t seed,
                                     float temperature = 1.0f) {
  v1::CompletionRequest request;
  for (int32_t id : Prompt()) request.mutable_token_ids()->add_ids(id);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_temperature(temperature);
  sampling.set_seed(seed);
  sampling.set_max_tokens(kMaxTokens);
  sampling.set_ignore_eos(true);
  if (n != 1) sampling.set_n(n);
  return request;
}

void SetTimeout(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(120));
}

class NSamplesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    metrics_port_ = strata::testing::FreePort();
    // No prefix caching: the only way the choices can share the prompt's
    // K/V is the fork itself, so the token count below proves it.
    auto daemon =
        StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                             {"--enable_prefix_caching=false",
                              absl::StrCat("--metrics_port=", metrics_port_)});
    if (daemon.ok()) {
      daemon_ = daemon->release();
    } else {
      start_error_ = new std::string(daemon.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(daemon_, nullptr) << *start_error_;
    stub_ = v1::Generation::NewStub(daemon_->channel());
  }

  v1::CompletionResponse Complete(const v1::CompletionRequest& request) {
    grpc::ClientContext context;
    SetTimeout(context);
    v1::CompletionResponse response;
    const grpc::Status status = stub_->Complete(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  // Tokens computed by the engine so far (the sum of the step-size
  // histogram), once the engine has been idle long enough for the observer
  // to have seen the last step.
  static double ComputedTokens() {
    double last = -1;
    for (int i = 0; i < 50; ++i) {
      const double now = strata::testing::PrometheusValue(
          strata::testing::HttpBody(
              strata::testing::HttpGet(metrics_port_, "/metrics")),
          "strata_step_tokens_sum");
      if (now == last) return now;
      last = now;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return last;
  }

  static inline StratadDaemon* daemon_ = nullptr;
  static inline std::string* start_error_ = nullptr;
  static inline int metrics_port_ = 0;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

std::vector<int32_t> Ids(const v1::Choice& choice) {
  return {choice.token_ids().begin(), choice.token_ids().end()};
}

TEST_F(NSamplesTest, ChoiceIEqualsASeparateRequestWithSeedPlusI) {
  const double before = ComputedTokens();
  const v1::CompletionResponse together = Complete(SampledRequest(4, kSeed));
  const double after_together = ComputedTokens();
  ASSERT_EQ(together.choices_size(), 4);

  std::vector<v1::CompletionResponse> alone;
  for (uint64_t i = 0; i < 4; ++i) {
    alone.push_back(Complete(SampledRequest(1, kSeed + i)));
  }
  const double after_alone = ComputedTokens();

  for (int i = 0; i < 4; ++i) {
    const v1::Choice& choice = together.choices(i);
    EXPECT_EQ(choice.index(), static_cast<uint32_t>(i));
    ASSERT_EQ(choice.token_ids_size(), static_cast<int>(kMaxTokens));
    EXPECT_THAT(Ids(choice), ElementsAreArray(alone[i].token_ids()))
        << "choice " << i << " differs from the n = 1 request with seed + "
        << i;
    EXPECT_EQ(choice.text(), alone[i].text());
    EXPECT_EQ(choice.finish_reason(), v1::FINISH_REASON_LENGTH);
    // An n = 1 response carries its one choice too, mirrored at the top.
    ASSERT_EQ(alone[i].choices_size(), 1);
    EXPECT_THAT(Ids(alone[i].choices(0)),
                ElementsAreArray(alone[i].token_ids()));
  }
  // Temperature 1 with different seeds: the choices are not all the same.
  EXPECT_NE(Ids(together.choices(0)), Ids(together.choices(1)));
  // The top-level fields mirror choice 0; usage counts the prompt once.
  EXPECT_THAT(together.token_ids(), ElementsAreArray(Ids(together.choices(0))));
  EXPECT_EQ(together.text(), together.choices(0).text());
  EXPECT_EQ(together.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(together.usage().prompt_tokens(),
            static_cast<uint32_t>(kPromptTokens));
  EXPECT_EQ(together.usage().completion_tokens(), 4 * kMaxTokens);

  // Shared prefill, counted exactly: the prompt but its last token once,
  // then each choice its last prompt token and kMaxTokens - 1 decode tokens.
  // Four separate requests compute the whole prompt four times.
  ASSERT_GE(before, 0) << "no strata_step_tokens_sum in /metrics";
  const int shared = kPromptTokens - 1 + 4 * static_cast<int>(kMaxTokens);
  const int separate = 4 * (kPromptTokens + static_cast<int>(kMaxTokens) - 1);
  EXPECT_EQ(after_together - before, shared);
  EXPECT_EQ(after_alone - after_together, separate);
}

TEST_F(NSamplesTest, StreamingTagsChunksWithTheirChoiceAndEndsEachOnce) {
  const v1::CompletionRequest request = SampledRequest(3, kSeed + 100);
  const v1::CompletionResponse unary = Complete(request);
  ASSERT_EQ(unary.choices_size(), 3);

  grpc::ClientContext context;
  SetTimeout(context);
  auto reader = stub_->CompleteStream(&context, request);
  std::vector<v1::CompletionChunk> chunks;
  v1::CompletionChunk chunk;
  while (reader->Read(&chunk)) chunks.push_back(chunk);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(chunks.empty());

  std::map<uint32_t, std::vector<int32_t>> ids;
  std::map<uint32_t, std::string> texts;
  std::map<uint32_t, int> finishes;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const v1::CompletionChunk& k = chunks[c];
    ASSERT_LT(k.index(), 3u);
    EXPECT_EQ(finishes[k.index()], 0)
        << "chunk for choice " << k.index() << " after its finish";
    ids[k.index()].insert(ids[k.index()].end(), k.token_ids().begin(),
                          k.token_ids().end());
    texts[k.index()] += k.text();
    if (k.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      EXPECT_EQ(k.finish_reason(), v1::FINISH_REASON_LENGTH);
      ++finishes[k.index()];
    }
    // Usage once, on the last chunk.
    EXPECT_EQ(k.has_usage(), c + 1 == chunks.size()) << "chunk " << c;
  }
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(finishes[i], 1) << "choice " << i;
    EXPECT_THAT(ids[i], ElementsAreArray(Ids(unary.choices(i))))
        << "choice " << i;
    EXPECT_EQ(texts[i], unary.choices(i).text());
  }
  const v1::Usage& usage = chunks.back().usage();
  EXPECT_EQ(usage.prompt_tokens(), static_cast<uint32_t>(kPromptTokens));
  EXPECT_EQ(usage.completion_tokens(), 3 * kMaxTokens);
}

TEST_F(NSamplesTest, NOutsideOneToSixteenIsInvalidArgument) {
  for (uint32_t n : {0u, 17u}) {
    grpc::ClientContext context;
    SetTimeout(context);
    v1::CompletionResponse response;
    const grpc::Status status =
        stub_->Complete(&context, SampledRequest(n, kSeed), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << n;
    EXPECT_THAT(status.error_message(), HasSubstr("sampling.n"));
  }
}

TEST_F(NSamplesTest, GreedyChoicesAreAllTheGreedyCompletion) {
  const v1::CompletionResponse two =
      Complete(SampledRequest(2, kSeed, /*temperature=*/0.0f));
  const v1::CompletionResponse one =
      Complete(SampledRequest(1, kSeed + 7, /*temperature=*/0.0f));
  ASSERT_EQ(two.choices_size(), 2);
  EXPECT_THAT(Ids(two.choices(0)), ElementsAreArray(Ids(two.choices(1))));
  EXPECT_THAT(Ids(two.choices(0)), ElementsAreArray(one.token_ids()));
  EXPECT_EQ(two.choices(1).index(), 1u);
}

TEST_F(NSamplesTest, ChatChoicesStopOnTheirOwn) {
  v1::ChatRequest request;
  v1::ChatMessage* message = request.add_messages();
  message->set_role("user");
  message->set_content("Tell me a story about a tiny llama.");
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_n(4);
  sampling.set_seed(kSeed);
  sampling.set_max_tokens(24);
  sampling.set_ignore_eos(true);
  sampling.add_stop("e");  // frequent in any text: most choices stop early
  grpc::ClientContext context;
  SetTimeout(context);
  v1::CompletionResponse response;
  const grpc::Status status = stub_->Chat(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.choices_size(), 4);
  uint32_t completion_tokens = 0;
  std::vector<int> lengths;
  for (const v1::Choice& choice : response.choices()) {
    completion_tokens += choice.token_ids_size();
    lengths.push_back(choice.token_ids_size());
    EXPECT_THAT(choice.text(), ::testing::Not(HasSubstr("e")));
    if (choice.finish_reason() == v1::FINISH_REASON_STOP) {
      EXPECT_EQ(choice.stop_reason(), "e");
    } else {
      EXPECT_EQ(choice.finish_reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(choice.token_ids_size(), 24);
    }
  }
  EXPECT_EQ(response.usage().completion_tokens(), completion_tokens);
  // They ended at different points (each on its own), not together.
  EXPECT_NE(*std::min_element(lengths.begin(), lengths.end()),
            *std::max_element(lengths.begin(), lengths.end()))
      << ::testing::PrintToString(lengths);
}

}  // namespace
}  // namespace strata
