// End-to-end tests: the real stratad binary on the tiny-llama fixture,
// driven over loopback gRPC with the generated strata.v1 stub, the standard
// health and reflection services, and strata-cli.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/integration/subprocess.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::grpc::health::v1::HealthCheckResponse;
using ::strata::testing::StratadDaemon;
using ::testing::Contains;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Every call gets a deadline so that a hang fails the test instead of
// hanging it.
constexpr auto kCallTimeout = std::chrono::seconds(60);

void SetTimeout(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
}

struct Reference {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> generated_ids;
};

Reference LoadReference() {
  std::ifstream in(strata::testing::TinyLlamaDir() + "/reference.json");
  nlohmann::json json = nlohmann::json::parse(in, nullptr,
                                              /*allow_exceptions=*/false);
  Reference reference;
  if (json.is_discarded()) return reference;
  reference.prompt_ids = json["prompt_ids"].get<std::vector<int32_t>>();
  reference.generated_ids = json["generated_ids"].get<std::vector<int32_t>>();
  return reference;
}

// Greedy, no EOS stop: the reference's continuation.
v1::CompletionRequest GreedyRequest(const std::vector<int32_t>& prompt,
                                    uint32_t max_tokens) {
  v1::CompletionRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

v1::ChatRequest UserChat(const std::string& content) {
  v1::ChatRequest request;
  v1::ChatMessage* system = request.add_messages();
  system->set_role("system");
  system->set_content("You are a tiny llama.");
  v1::ChatMessage* user = request.add_messages();
  user->set_role("user");
  user->set_content(content);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(12);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

// All chunks of a stream, and how it ended.
struct StreamResult {
  std::vector<v1::CompletionChunk> chunks;
  grpc::Status status;

  std::string Text() const {
    std::string text;
    for (const auto& chunk : chunks) text += chunk.text();
    return text;
  }
  std::vector<int32_t> Ids() const {
    std::vector<int32_t> ids;
    for (const auto& chunk : chunks) {
      ids.insert(ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    }
    return ids;
  }
};

StreamResult ReadAll(grpc::ClientReader<v1::CompletionChunk>& reader) {
  StreamResult result;
  v1::CompletionChunk chunk;
  while (reader.Read(&chunk)) result.chunks.push_back(chunk);
  result.status = reader.Finish();
  return result;
}

class StratadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    reference_ = new Reference(LoadReference());
    auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir());
    if (daemon.ok()) {
      daemon_ = daemon->release();
    } else {
      start_error_ = new std::string(daemon.status().ToString());
    }
  }

  static void TearDownTestSuite() {
    if (daemon_ != nullptr) {
      // SIGTERM is a clean shutdown: exit status 0.
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->process().ReadStderr();
      delete daemon_;
      daemon_ = nullptr;
    }
    delete start_error_;
    start_error_ = nullptr;
    delete reference_;
    reference_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(daemon_, nullptr) << (start_error_ ? *start_error_ : "");
    ASSERT_TRUE(daemon_->Alive()) << daemon_->process().ReadStderr();
    ASSERT_FALSE(reference_->prompt_ids.empty()) << "reference.json";
    stub_ = v1::Generation::NewStub(daemon_->channel());
  }

  // The daemon survived whatever the test did and still generates.
  void ExpectStillServing() {
    ASSERT_TRUE(daemon_->Alive()) << daemon_->process().ReadStderr();
    auto health = daemon_->Health("strata.v1.Generation");
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, HealthCheckResponse::SERVING);
    v1::CompletionResponse response;
    EXPECT_TRUE(
        Complete(GreedyRequest(reference_->prompt_ids, 2), response).ok());
    EXPECT_EQ(response.token_ids_size(), 2);
  }

  grpc::Status Complete(const v1::CompletionRequest& request,
                        v1::CompletionResponse& response) {
    grpc::ClientContext context;
    SetTimeout(context);
    return stub_->Complete(&context, request, &response);
  }

  StreamResult CompleteStream(const v1::CompletionRequest& request) {
    grpc::ClientContext context;
    SetTimeout(context);
    auto reader = stub_->CompleteStream(&context, request);
    return ReadAll(*reader);
  }

  static StratadDaemon* daemon_;
  static std::string* start_error_;
  static Reference* reference_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

StratadDaemon* StratadTest::daemon_ = nullptr;
std::string* StratadTest::start_error_ = nullptr;
Reference* StratadTest::reference_ = nullptr;

TEST_F(StratadTest, HealthReportsServing) {
  for (const char* service : {"", "strata.v1.Generation"}) {
    auto health = daemon_->Health(service);
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, HealthCheckResponse::SERVING) << service;
  }
  auto unknown = daemon_->Health("no.such.Service");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StratadTest, ReflectionListsTheServices) {
  auto stub =
      grpc::reflection::v1alpha::ServerReflection::NewStub(daemon_->channel());
  grpc::ClientContext context;
  SetTimeout(context);
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("*");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names, Contains("strata.v1.Generation"));
  EXPECT_THAT(names, Contains("grpc.health.v1.Health"));
  EXPECT_THAT(names, Contains("grpc.reflection.v1alpha.ServerReflection"));
}

TEST_F(StratadTest, ModelInfo) {
  grpc::ClientContext context;
  SetTimeout(context);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.name(), "tiny-llama");
  EXPECT_EQ(info.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.context_length(), 512u);  // max_position_embeddings < 4096
  EXPECT_EQ(info.vocab_size(), 1808u);
  EXPECT_EQ(info.num_layers(), 2u);
  EXPECT_EQ(info.num_key_value_heads(), 2u);
  EXPECT_EQ(info.chat_template(), "llama3");
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_TRUE(info.has_bos_token_id());
  EXPECT_EQ(info.eos_token_ids_size(), 2);
}

TEST_F(StratadTest, UnaryGreedyMatchesTheReference) {
  v1::CompletionResponse response;
  ASSERT_TRUE(
      Complete(GreedyRequest(reference_->prompt_ids, 20), response).ok());
  ASSERT_GE(reference_->generated_ids.size(), 20u);
  EXPECT_THAT(response.token_ids(),
              ElementsAreArray(reference_->generated_ids.begin(),
                               reference_->generated_ids.begin() + 20));
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.usage().prompt_tokens(), reference_->prompt_ids.size());
  EXPECT_EQ(response.usage().completion_tokens(), 20u);
  EXPECT_GE(response.usage().time_to_first_token_seconds(),
            response.usage().queue_time_seconds());

  // The text is the detokenized ids.
  grpc::ClientContext context;
  SetTimeout(context);
  v1::DetokenizeRequest detokenize;
  detokenize.mutable_token_ids()->CopyFrom(response.token_ids());
  detokenize.set_skip_special_tokens(true);
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub_->Detokenize(&context, detokenize, &text).ok());
  EXPECT_EQ(response.text(), text.text());
}

TEST_F(StratadTest, StreamingEqualsUnary) {
  const v1::CompletionRequest request =
      GreedyRequest(reference_->prompt_ids, 20);
  v1::CompletionResponse unary;
  ASSERT_TRUE(Complete(request, unary).ok());
  StreamResult stream = CompleteStream(request);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_FALSE(stream.chunks.empty());
  EXPECT_EQ(stream.Text(), unary.text());
  EXPECT_THAT(stream.Ids(), ElementsAreArray(unary.token_ids()));
  // Finish reason and usage on the last chunk only.
  for (size_t i = 0; i + 1 < stream.chunks.size(); ++i) {
    EXPECT_EQ(stream.chunks[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(stream.chunks[i].has_usage());
  }
  const v1::CompletionChunk& last = stream.chunks.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 20u);
  EXPECT_EQ(last.usage().prompt_tokens(), reference_->prompt_ids.size());
}

// The last token, the finish reason, the usage and the call's status go out
// together: a one-token stream is one message (it was two, the second
// waiting for the first write to complete on a gRPC thread).
TEST_F(StratadTest, AOneTokenStreamIsOneMessage) {
  StreamResult stream =
      CompleteStream(GreedyRequest(reference_->prompt_ids, 1));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_EQ(stream.chunks.size(), 1u);
  const v1::CompletionChunk& only = stream.chunks[0];
  EXPECT_EQ(only.token_ids_size(), 1);
  EXPECT_EQ(only.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(only.usage().completion_tokens(), 1u);
}

TEST_F(StratadTest, TextPromptGetsBosAndMatchesIds) {
  // The reference prompt is BOS + the encoded text.
  grpc::ClientContext context;
  SetTimeout(context);
  v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time, there was a tiny llama");
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub_->Tokenize(&context, tokenize, &tokens).ok());
  EXPECT_THAT(tokens.token_ids(), ElementsAreArray(reference_->prompt_ids));
  EXPECT_EQ(tokens.tokens(0), "<|begin_of_text|>");

  v1::CompletionRequest request = GreedyRequest({}, 20);
  request.set_text(tokenize.text());
  v1::CompletionResponse response;
  ASSERT_TRUE(Complete(request, response).ok());
  EXPECT_THAT(response.token_ids(),
              ElementsAreArray(reference_->generated_ids.begin(),
                               reference_->generated_ids.begin() + 20));
}

TEST_F(StratadTest, TokenizeDetokenizeRoundTrip) {
  const std::string text = "Hello wörld 🙂 日本語";
  grpc::ClientContext tokenize_context;
  SetTimeout(tokenize_context);
  v1::TokenizeRequest tokenize;
  tokenize.set_text(text);
  tokenize.set_add_special_tokens(false);
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub_->Tokenize(&tokenize_context, tokenize, &tokens).ok());
  ASSERT_EQ(tokens.token_ids_size(), tokens.tokens_size());

  grpc::ClientContext detokenize_context;
  SetTimeout(detokenize_context);
  v1::DetokenizeRequest detokenize;
  detokenize.mutable_token_ids()->CopyFrom(tokens.token_ids());
  v1::DetokenizeResponse back;
  ASSERT_TRUE(stub_->Detokenize(&detokenize_context, detokenize, &back).ok());
  EXPECT_EQ(back.text(), text);
}

TEST_F(StratadTest, ChatUnaryAndStreamAgree) {
  const v1::ChatRequest request = UserChat("Tell me about llamas.");
  grpc::ClientContext context;
  SetTimeout(context);
  v1::CompletionResponse unary;
  grpc::Status status = stub_->Chat(&context, request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(unary.token_ids_size(), 12);
  EXPECT_EQ(unary.finish_reason(), v1::FINISH_REASON_LENGTH);
  // The rendered template is far longer than the user's words.
  EXPECT_GT(unary.usage().prompt_tokens(), 20u);

  grpc::ClientContext stream_context;
  SetTimeout(stream_context);
  auto reader = stub_->ChatStream(&stream_context, request);
  StreamResult stream = ReadAll(*reader);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.Text(), unary.text());
  EXPECT_THAT(stream.Ids(), ElementsAreArray(unary.token_ids()));
  EXPECT_EQ(stream.chunks.back().usage().prompt_tokens(),
            unary.usage().prompt_tokens());
}

TEST_F(StratadTest, ChatWithANamedTemplate) {
  v1::ChatRequest request = UserChat("Hi");
  request.set_chat_template("llama3");
  grpc::ClientContext context;
  SetTimeout(context);
  v1::CompletionResponse response;
  EXPECT_TRUE(stub_->Chat(&context, request, &response).ok());

  // tiny-llama has no <|im_start|>: ChatML cannot be rendered for it.
  request.set_chat_template("chatml");
  grpc::ClientContext chatml_context;
  SetTimeout(chatml_context);
  const grpc::Status status = stub_->Chat(&chatml_context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), StartsWith("chat_template: chatml"));
}

TEST_F(StratadTest, Logprobs) {
  v1::CompletionRequest request = GreedyRequest(reference_->prompt_ids, 8);
  request.mutable_sampling()->set_logprobs(true);
  request.mutable_sampling()->set_top_logprobs(3);
  v1::CompletionResponse response;
  ASSERT_TRUE(Complete(request, response).ok());
  ASSERT_EQ(response.logprobs_size(), 8);
  for (int i = 0; i < response.logprobs_size(); ++i) {
    const v1::TokenLogprob& logprob = response.logprobs(i);
    EXPECT_EQ(logprob.token_id(), response.token_ids(i));
    EXPECT_LE(logprob.logprob(), 0.0f);
    ASSERT_EQ(logprob.top_size(), 3);
    // Greedy picks the most likely token.
    EXPECT_EQ(logprob.top(0).token_id(), logprob.token_id());
    EXPECT_FLOAT_EQ(logprob.top(0).logprob(), logprob.logprob());
    EXPECT_GE(logprob.top(0).logprob(), logprob.top(1).logprob());
    EXPECT_GE(logprob.top(1).logprob(), logprob.top(2).logprob());
    for (const auto& top : logprob.top()) EXPECT_FALSE(top.text().empty());
  }

  // Streaming carries the same logprobs.
  StreamResult stream = CompleteStream(request);
  ASSERT_TRUE(stream.status.ok());
  int num_logprobs = 0;
  for (const auto& chunk : stream.chunks) num_logprobs += chunk.logprobs_size();
  EXPECT_EQ(num_logprobs, 8);
}

TEST_F(StratadTest, SeedMakesSamplingReproducible) {
  auto sample = [&](uint64_t seed) {
    v1::CompletionRequest request = GreedyRequest(reference_->prompt_ids, 16);
    request.mutable_sampling()->set_temperature(1.0f);
    request.mutable_sampling()->set_seed(seed);
    v1::CompletionResponse response;
    EXPECT_TRUE(Complete(request, response).ok());
    return std::vector<int32_t>(response.token_ids().begin(),
                                response.token_ids().end());
  };
  const std::vector<int32_t> first = sample(7);
  EXPECT_EQ(first.size(), 16u);
  EXPECT_EQ(sample(7), first);
  // Some other seed draws differently (three tries: no flake by chance).
  bool differs = false;
  for (uint64_t seed : {8, 9, 10}) differs |= sample(seed) != first;
  EXPECT_TRUE(differs);
}

TEST_F(StratadTest, StopStringEndsGenerationBeforeIt) {
  v1::CompletionResponse full;
  ASSERT_TRUE(Complete(GreedyRequest(reference_->prompt_ids, 20), full).ok());
  ASSERT_GE(full.text().size(), 12u);
  // Three bytes from the middle of the text, and where they first appear.
  std::string stop = full.text().substr(full.text().size() / 2, 3);
  while (!stop.empty() &&
         (static_cast<unsigned char>(stop.back()) & 0xC0) == 0x80) {
    stop.pop_back();  // keep the stop string whole UTF-8
  }
  const size_t at = full.text().find(stop);

  v1::CompletionRequest request = GreedyRequest(reference_->prompt_ids, 20);
  request.mutable_sampling()->add_stop(stop);
  v1::CompletionResponse response;
  ASSERT_TRUE(Complete(request, response).ok());
  EXPECT_EQ(response.text(), full.text().substr(0, at));
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(response.stop_reason(), stop);
  EXPECT_LT(response.token_ids_size(), 20);

  StreamResult stream = CompleteStream(request);
  ASSERT_TRUE(stream.status.ok());
  EXPECT_EQ(stream.Text(), response.text());
}

TEST_F(StratadTest, StopTokenIsCountedNotShown) {
  const std::vector<int32_t>& generated = reference_->generated_ids;
  const int32_t stop_id = generated[5];
  size_t first = 0;
  while (generated[first] != stop_id) ++first;

  v1::CompletionRequest request = GreedyRequest(reference_->prompt_ids, 20);
  request.mutable_sampling()->add_stop_token_ids(stop_id);
  v1::CompletionResponse response;
  ASSERT_TRUE(Complete(request, response).ok());
  EXPECT_THAT(
      response.token_ids(),
      ElementsAreArray(generated.begin(), generated.begin() + first + 1));
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(response.usage().completion_tokens(), first + 1);

  // Its text is the text of the tokens before it.
  v1::CompletionResponse shorter;
  ASSERT_TRUE(
      Complete(GreedyRequest(reference_->prompt_ids, first), shorter).ok());
  if (first == 0) shorter.clear_text();
  EXPECT_EQ(response.text(), shorter.text());
}

TEST_F(StratadTest, MaxTokensIsCappedByTheContext) {
  // 512-token context: a 500-token prompt leaves room for 12.
  std::vector<int32_t> prompt(500, reference_->prompt_ids[1]);
  v1::CompletionRequest request = GreedyRequest(prompt, 100);
  v1::CompletionResponse response;
  ASSERT_TRUE(Complete(request, response).ok());
  EXPECT_EQ(response.token_ids_size(), 12);
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST_F(StratadTest, ClientCancelMidStream) {
  grpc::ClientContext context;
  SetTimeout(context);
  auto reader = stub_->CompleteStream(
      &context, GreedyRequest(reference_->prompt_ids, 480));
  v1::CompletionChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(reader->Read(&chunk));
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectStillServing();
}

TEST_F(StratadTest, DeadlineExceeded) {
  // 5 ms reaches the server yet is far shorter than generating the rest of
  // the context (~490 tokens take ~40 ms even on an idle fast machine).
  for (bool stream : {false, true}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(5));
    const v1::CompletionRequest request =
        GreedyRequest(reference_->prompt_ids, 1000);
    grpc::Status status;
    if (stream) {
      auto reader = stub_->CompleteStream(&context, request);
      status = ReadAll(*reader).status;
    } else {
      v1::CompletionResponse response;
      status = stub_->Complete(&context, request, &response);
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << stream;
  }
  ExpectStillServing();
}

// Many clients at once, half of them walking away mid-stream or with tiny
// deadlines: every call ends with a sensible status and the daemon carries on.
TEST_F(StratadTest, ConcurrentCallsWithCancellations) {
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 6;
  std::vector<std::thread> threads;
  std::vector<int> ok(kThreads, 0);
  std::vector<std::string> unexpected(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Generation::NewStub(daemon_->channel());
      for (int i = 0; i < kCallsPerThread; ++i) {
        grpc::ClientContext context;
        const int kind = (t + i) % 4;
        if (kind == 3) {
          context.set_deadline(std::chrono::system_clock::now() +
                               std::chrono::milliseconds(5 + 7 * i));
        } else {
          SetTimeout(context);
        }
        v1::CompletionRequest request =
            GreedyRequest(reference_->prompt_ids, kind == 0 ? 16 : 200);
        grpc::Status status;
        if (kind == 0) {
          v1::CompletionResponse response;
          status = stub->Complete(&context, request, &response);
          if (status.ok() && response.token_ids_size() != 16) {
            unexpected[t] += "short unary response; ";
          }
        } else {
          auto reader = stub->CompleteStream(&context, request);
          v1::CompletionChunk chunk;
          int reads = 0;
          while (reader->Read(&chunk)) {
            if (kind == 1 && ++reads == 1 + i) context.TryCancel();
          }
          status = reader->Finish();
        }
        if (status.ok()) {
          ++ok[t];
        } else if (status.error_code() != grpc::StatusCode::CANCELLED &&
                   status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
          unexpected[t] += absl::StrCat(status.error_code(), " ",
                                        status.error_message(), "; ");
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  int total_ok = 0;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(unexpected[t], "") << "thread " << t;
    total_ok += ok[t];
  }
  // Kinds 0 and 2 always run to the end.
  EXPECT_GE(total_ok, kThreads * kCallsPerThread / 2);
  ExpectStillServing();
}

// Every bad input is INVALID_ARGUMENT with a message starting with the field.
TEST_F(StratadTest, BadInputsNameTheField) {
  struct Case {
    std::string field;
    std::function<grpc::Status(v1::Generation::Stub&, grpc::ClientContext&)>
        call;
  };
  auto completion = [](std::function<void(v1::CompletionRequest&)> edit) {
    return [edit](v1::Generation::Stub& stub, grpc::ClientContext& context) {
      v1::CompletionRequest request;
      request.set_text("Once upon a time");
      edit(request);
      v1::CompletionResponse response;
      return stub.Complete(&context, request, &response);
    };
  };
  auto streamed = [](std::function<void(v1::CompletionRequest&)> edit) {
    return [edit](v1::Generation::Stub& stub, grpc::ClientContext& context) {
      v1::CompletionRequest request;
      request.set_text("Once upon a time");
      edit(request);
      auto reader = stub.CompleteStream(&context, request);
      return ReadAll(*reader).status;
    };
  };
  auto chat = [](std::function<void(v1::ChatRequest&)> edit) {
    return [edit](v1::Generation::Stub& stub, grpc::ClientContext& context) {
      v1::ChatRequest request = UserChat("Hi");
      edit(request);
      v1::CompletionResponse response;
      return stub.Chat(&context, request, &response);
    };
  };
  using R = v1::CompletionRequest;
  const std::vector<Case> cases = {
      {"prompt", completion([](R& r) { r.clear_prompt(); })},
      {"prompt.text", completion([](R& r) { r.set_text(""); })},
      {"prompt.text", completion([](R& r) { r.set_text("bad \xFF"); })},
      {"prompt.token_ids", completion([](R& r) { r.mutable_token_ids(); })},
      {"prompt.token_ids[1]", completion([](R& r) {
         r.mutable_token_ids()->add_ids(1);
         r.mutable_token_ids()->add_ids(99999);
       })},
      {"prompt", completion([](R& r) {
         for (int i = 0; i < 600; ++i) r.mutable_token_ids()->add_ids(5);
       })},
      {"prompt", completion([](R& r) {
         std::string text;
         for (int i = 0; i < 600; ++i) text += " llama";
         r.set_text(text);
       })},
      {"sampling.max_tokens",
       completion([](R& r) { r.mutable_sampling()->set_max_tokens(0); })},
      {"sampling.temperature",
       completion([](R& r) { r.mutable_sampling()->set_temperature(-1); })},
      {"sampling.temperature",
       completion([](R& r) { r.mutable_sampling()->set_temperature(101); })},
      {"sampling.top_k",
       completion([](R& r) { r.mutable_sampling()->set_top_k(-1); })},
      {"sampling.top_p",
       completion([](R& r) { r.mutable_sampling()->set_top_p(0); })},
      {"sampling.min_p",
       completion([](R& r) { r.mutable_sampling()->set_min_p(1.5f); })},
      {"sampling.repetition_penalty", completion([](R& r) {
         r.mutable_sampling()->set_repetition_penalty(0);
       })},
      {"sampling.presence_penalty", completion([](R& r) {
         r.mutable_sampling()->set_presence_penalty(2.5f);
       })},
      {"sampling.frequency_penalty", completion([](R& r) {
         r.mutable_sampling()->set_frequency_penalty(-3);
       })},
      {"sampling.top_logprobs", completion([](R& r) {
         r.mutable_sampling()->set_logprobs(true);
         r.mutable_sampling()->set_top_logprobs(21);
       })},
      {"sampling.stop[0]",
       completion([](R& r) { r.mutable_sampling()->add_stop(""); })},
      {"sampling.stop[0]",
       completion([](R& r) { r.mutable_sampling()->add_stop("\xE2\x82"); })},
      {"sampling.stop", completion([](R& r) {
         for (int i = 0; i < 17; ++i) {
           r.mutable_sampling()->add_stop(absl::StrCat("s", i));
         }
       })},
      {"sampling.stop_token_ids[0]", completion([](R& r) {
         r.mutable_sampling()->add_stop_token_ids(1808);
       })},
      {"sampling.temperature",
       streamed([](R& r) { r.mutable_sampling()->set_temperature(-1); })},
      {"prompt.text", streamed([](R& r) { r.set_text("\xC0\x80"); })},
      {"messages", chat([](v1::ChatRequest& r) { r.clear_messages(); })},
      {"messages[1].role", chat([](v1::ChatRequest& r) {
         r.mutable_messages(1)->set_role("bot");
       })},
      {"messages[1].content", chat([](v1::ChatRequest& r) {
         r.mutable_messages(1)->set_content("\xF0\x9F");
       })},
      {"chat_template",
       chat([](v1::ChatRequest& r) { r.set_chat_template("jinja2"); })},
      {"sampling.top_p",
       chat([](v1::ChatRequest& r) { r.mutable_sampling()->set_top_p(2); })},
      {"text",
       [](v1::Generation::Stub& stub, grpc::ClientContext& context) {
         v1::TokenizeRequest request;
         request.set_text("\xFF");
         v1::TokenizeResponse response;
         return stub.Tokenize(&context, request, &response);
       }},
      {"token_ids[0]",
       [](v1::Generation::Stub& stub, grpc::ClientContext& context) {
         v1::DetokenizeRequest request;
         request.add_token_ids(-4);
         v1::DetokenizeResponse response;
         return stub.Detokenize(&context, request, &response);
       }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    grpc::ClientContext context;
    SetTimeout(context);
    const grpc::Status status = cases[i].call(*stub_, context);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << "case " << i << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), StartsWith(cases[i].field + ": "))
        << "case " << i;
  }
  ExpectStillServing();
}

TEST_F(StratadTest, StrataCliCompletesAndChats) {
  v1::CompletionRequest request = GreedyRequest({}, 8);
  request.set_text("Once upon a time");
  v1::CompletionResponse expected;
  ASSERT_TRUE(Complete(request, expected).ok());

  auto result = strata::testing::RunCommand(
      {strata::testing::StrataCliPath(), "--addr=" + daemon_->address(),
       "complete", "Once upon a time", "--max_tokens=8", "--temperature=0",
       "--ignore_eos"},
      absl::Seconds(60));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_status, 0) << result->err;
  EXPECT_EQ(result->out, expected.text());
  EXPECT_THAT(result->err, HasSubstr("finish: length"));
  EXPECT_THAT(result->err, HasSubstr("completion 8 tokens"));

  auto chat = strata::testing::RunCommand(
      {strata::testing::StrataCliPath(), "--addr=" + daemon_->address(), "chat",
       "--system=Be brief.", "Hi", "--max_tokens=4", "--nostream"},
      absl::Seconds(60));
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->exit_status, 0) << chat->err;
  EXPECT_THAT(chat->err, HasSubstr("finish:"));

  auto info =
      strata::testing::RunCommand({strata::testing::StrataCliPath(),
                                   "--addr=" + daemon_->address(), "info"},
                                  absl::Seconds(60));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->exit_status, 0) << info->err;
  EXPECT_THAT(info->out, HasSubstr("tiny-llama"));

  auto health = strata::testing::RunCommand(
      {strata::testing::StrataCliPath(), "--addr=" + daemon_->address(),
       "health", "strata.v1.Generation"},
      absl::Seconds(60));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->exit_status, 0) << health->err;
  EXPECT_EQ(health->out, "SERVING\n");
}

TEST_F(StratadTest, StrataCliReportsErrors) {
  auto result = strata::testing::RunCommand(
      {strata::testing::StrataCliPath(), "--addr=" + daemon_->address(),
       "complete", "x", "--max_tokens=0"},
      absl::Seconds(60));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NE(result->exit_status, 0);
  EXPECT_THAT(result->err, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(result->err, HasSubstr("sampling.max_tokens"));
}

// A model folder whose weights are cut short: stratad refuses to start and
// names the file.
TEST(StratadStartupTest, CorruptModelExitsNamingTheFile) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      absl::StrCat("strata-corrupt-model-", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::copy(strata::testing::TinyLlamaDir(), dir);
  const std::filesystem::path weights = dir / "model.safetensors";
  std::filesystem::resize_file(weights,
                               std::filesystem::file_size(weights) / 2);

  auto result = strata::testing::RunCommand(
      {strata::testing::StratadPath(), "--model=" + dir.string(), "--port=0"},
      absl::Seconds(60));
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NE(result->exit_status, 0);
  EXPECT_THAT(result->err, HasSubstr("model.safetensors"));
}

TEST(StratadStartupTest, BadFlagsAreExplained) {
  auto result =
      strata::testing::RunCommand({strata::testing::StratadPath(),
                                   "--model=" + strata::testing::TinyLlamaDir(),
                                   "--port=0", "--chat_template=jinja"},
                                  absl::Seconds(60));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NE(result->exit_status, 0);
  EXPECT_THAT(result->err, HasSubstr("chat_template"));

  // Prompt exits need propagated K/V: the scheduler plans no fills for them.
  // Their default turns off under --kv_fill=recompute (RecursiveServingTest
  // starts it so); asked for explicitly, the pair is refused.
  auto prompt_exits = strata::testing::RunCommand(
      {strata::testing::StratadPath(),
       "--model=" + strata::testing::TinyLlamaDir(), "--port=0",
       "--prompt_exits", "--kv_fill=recompute"},
      absl::Seconds(60));
  ASSERT_TRUE(prompt_exits.ok()) << prompt_exits.status();
  EXPECT_NE(prompt_exits->exit_status, 0);
  EXPECT_THAT(prompt_exits->err, HasSubstr("prompt_exits"));

  auto missing =
      strata::testing::RunCommand({strata::testing::StratadPath(),
                                   "--model=/nonexistent/model", "--port=0"},
                                  absl::Seconds(60));
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_NE(missing->exit_status, 0);
  EXPECT_THAT(missing->err, HasSubstr("/nonexistent/model"));
}

// Admission control's RESOURCE_EXHAUSTED reaches the client unchanged. The
// engine is held before its first step (StallHook), so A stays in the one
// queue slot until B has been refused, however slowly this machine runs the
// daemon's threads; released, A is served.
TEST(StratadAdmissionTest, FullQueueIsResourceExhausted) {
  strata::testing::StallHook hook;  // the daemon inherits the variable
  const int metrics_port = strata::testing::FreePort();
  ASSERT_GT(metrics_port, 0);
  auto daemon =
      StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                           {"--max_num_seqs=1", "--max_waiting_requests=1",
                            absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto stub = v1::Generation::NewStub((*daemon)->channel());
  v1::CompletionRequest request;
  request.set_text("Once upon a time");
  request.mutable_sampling()->set_max_tokens(16);
  request.mutable_sampling()->set_ignore_eos(true);

  // A waits in the one queue slot behind the held engine.
  hook.Stall();
  grpc::ClientContext a_context;
  SetTimeout(a_context);
  auto a = stub->CompleteStream(&a_context, request);
  ASSERT_TRUE(
      strata::testing::AwaitMetric(metrics_port, "strata_requests_waiting", 1));
  // B finds the queue full.
  grpc::ClientContext b_context;
  SetTimeout(b_context);
  v1::CompletionResponse response;
  const grpc::Status b = stub->Complete(&b_context, request, &response);
  EXPECT_EQ(b.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << b.error_message();
  EXPECT_THAT(b.error_message(), HasSubstr("max_waiting_requests"));

  // Released, A runs to the end.
  hook.Release();
  const StreamResult a_result = ReadAll(*a);
  EXPECT_TRUE(a_result.status.ok()) << a_result.status.error_message();
  EXPECT_FALSE(a_result.chunks.empty());
}

// SIGTERM while a request streams and its client does not read: the stream
// ends, the daemon exits 0. (The shutdown waits up to its 2 s cancel grace
// for this idle client's connection to close.)
TEST(StratadShutdownTest, SigtermWithARequestInFlight) {
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--shutdown_grace=0.1s"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto stub = v1::Generation::NewStub((*daemon)->channel());
  grpc::ClientContext context;
  SetTimeout(context);
  v1::CompletionRequest request;
  request.set_text("Once upon a time");
  request.mutable_sampling()->set_max_tokens(480);
  request.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->CompleteStream(&context, request);
  v1::CompletionChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));

  EXPECT_EQ((*daemon)->Stop(), 0) << (*daemon)->process().ReadStderr();
  while (reader->Read(&chunk)) {
  }
  const grpc::Status status = reader->Finish();
  // Finished in time, or cut short by the shutdown; never a hang.
  EXPECT_TRUE(status.ok() ||
              status.error_code() == grpc::StatusCode::UNAVAILABLE ||
              status.error_code() == grpc::StatusCode::CANCELLED)
      << status.error_code() << " " << status.error_message();
}

}  // namespace
}  // namespace strata
