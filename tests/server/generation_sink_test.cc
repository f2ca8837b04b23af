// GenerationSink with the real tiny-llama tokenizer: text deltas, stop
// strings, stop tokens, logprobs and the final chunk.
#include "server/generation_sink.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/output_worker.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace strata {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

class RecordingListener : public GenerationListener {
 public:
  void OnChunk(v1::CompletionChunk chunk) override {
    chunks.push_back(std::move(chunk));
  }
  void OnComplete(v1::CompletionChunk chunk, absl::Status s) override {
    last = std::move(chunk);
    status = std::move(s);
    ++num_complete;
  }

  // Everything the client would have read.
  std::string Text() const {
    std::string text;
    for (const auto& chunk : chunks) text += chunk.text();
    if (last.has_value()) text += last->text();
    return text;
  }
  std::vector<TokenId> Ids() const {
    std::vector<TokenId> ids;
    for (const auto& chunk : chunks) {
      ids.insert(ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    }
    return ids;
  }

  std::vector<v1::CompletionChunk> chunks;
  std::optional<v1::CompletionChunk> last;
  absl::Status status;
  int num_complete = 0;
};

TokenEvent Event(TokenId id, bool is_stop_token = false) {
  TokenEvent event;
  event.sampled.token = id;
  event.is_stop_token = is_stop_token;
  return event;
}

FinishInfo Finished(FinishReason reason, absl::Status status = {}) {
  FinishInfo info;
  info.reason = reason;
  info.status = std::move(status);
  info.stats.prompt_tokens = 7;
  info.stats.completion_tokens = 3;
  info.stats.cached_prompt_tokens = 4;
  info.stats.queue_time = absl::Milliseconds(250);
  info.stats.time_to_first_token = absl::Milliseconds(500);
  return info;
}

class GenerationSinkTest : public ::testing::Test {
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

  // n: choices of one request.
  std::unique_ptr<GenerationSink> MakeSink(
      std::vector<std::string> stop_strings = {}, bool logprobs = false,
      int32_t n = 1) {
    return std::make_unique<GenerationSink>(
        GenerationSink::Options{.tokenizer = tokenizer_,
                                .stop_strings = std::move(stop_strings),
                                .logprobs = logprobs,
                                .n = n},
        &listener_);
  }

  std::vector<TokenId> Encode(const std::string& text) {
    auto ids = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<TokenId>{};
  }

  static Tokenizer* tokenizer_;
  RecordingListener listener_;
};

Tokenizer* GenerationSinkTest::tokenizer_ = nullptr;

}  // namespace

class GenerationSinkTestPeer {
 public:
  // The stop strings each choice's matcher reads.
  static std::vector<const void*> StopStringCopies(const GenerationSink& sink) {
    std::vector<const void*> copies;
    for (const auto& choice : sink.choices_) {
      copies.push_back(choice.stop_matcher.stop_strings().get());
    }
    return copies;
  }
};

namespace {

// Ten requests of n = 16 with megabytes of stop strings once took RSS from
// 186 MB to 857 MB: every choice kept its own copy. One copy per request.
TEST_F(GenerationSinkTest, ChoicesShareOneCopyOfTheStopStrings) {
  GenerationSink sink(
      GenerationSink::Options{.tokenizer = tokenizer_,
                              .stop_strings = {"END", std::string(200, 'x')},
                              .n = 16},
      &listener_);
  const std::vector<const void*> copies =
      GenerationSinkTestPeer::StopStringCopies(sink);
  ASSERT_EQ(copies.size(), 16u);
  ASSERT_NE(copies[0], nullptr);
  for (const void* copy : copies) EXPECT_EQ(copy, copies[0]);
}

TEST_F(GenerationSinkTest, StreamsTextNeverSplittingACharacter) {
  const std::string text = "Hello wörld 🙂 日本語, ok!";
  const std::vector<TokenId> ids = Encode(text);
  auto sink = MakeSink();
  for (TokenId id : ids) EXPECT_TRUE(sink->OnToken(Event(id)));
  sink->OnFinish(Finished(FinishReason::kLength));

  EXPECT_EQ(listener_.Text(), text);
  EXPECT_THAT(listener_.Ids(), ElementsAreArray(ids));
  ASSERT_EQ(listener_.chunks.size(), ids.size());  // one chunk per token
  bool held_back = false;
  for (const auto& chunk : listener_.chunks) {
    EXPECT_TRUE(IsValidUtf8(chunk.text())) << chunk.ShortDebugString();
    held_back |= chunk.text().empty();
  }
  // Some character of the text spans tokens, so some delta had to wait.
  EXPECT_TRUE(held_back);
  ASSERT_TRUE(listener_.last.has_value());
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(listener_.status.ok());
  EXPECT_EQ(listener_.num_complete, 1);
}

TEST_F(GenerationSinkTest, StopStringSpanningTokensIsNotEmitted) {
  const std::vector<TokenId> ids = Encode("Hello world, and more");
  ASSERT_GE(ids.size(), 4u);
  // The last byte of token 1 plus the first two of token 2: the stop string
  // only appears once both tokens are there.
  const std::string first(tokenizer_->TokenBytes(ids[1]));
  const std::string second(tokenizer_->TokenBytes(ids[2]));
  ASSERT_GE(second.size(), 2u);
  const std::string stop = first.substr(first.size() - 1) + second.substr(0, 2);

  auto sink = MakeSink({"never", stop});
  EXPECT_TRUE(sink->OnToken(Event(ids[0])));
  EXPECT_TRUE(sink->OnToken(Event(ids[1])));   // ends with a stop prefix
  EXPECT_FALSE(sink->OnToken(Event(ids[2])));  // completes the stop string
  sink->OnFinish(Finished(FinishReason::kStop));

  const std::string expected = std::string(tokenizer_->TokenBytes(ids[0])) +
                               first.substr(0, first.size() - 1);
  EXPECT_EQ(listener_.Text(), expected);
  EXPECT_THAT(listener_.Text(), Not(HasSubstr(stop)));
  ASSERT_TRUE(listener_.last.has_value());
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(listener_.last->stop_reason(), stop);
  // The tokens were generated, so they are still reported as ids.
  EXPECT_THAT(listener_.Ids(), ElementsAreArray(ids.begin(), ids.begin() + 3));
}

TEST_F(GenerationSinkTest, StopTokenIsCountedButNotShown) {
  const std::optional<TokenId> eot = tokenizer_->TokenToId("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  const std::vector<TokenId> ids = Encode("Hi there");
  auto sink = MakeSink();
  for (TokenId id : ids) EXPECT_TRUE(sink->OnToken(Event(id)));
  EXPECT_FALSE(sink->OnToken(Event(*eot, /*is_stop_token=*/true)));
  sink->OnFinish(Finished(FinishReason::kStop));

  EXPECT_EQ(listener_.Text(), "Hi there");
  EXPECT_EQ(listener_.chunks.back().token_ids(0), *eot);
  EXPECT_EQ(listener_.chunks.back().text(), "");
  EXPECT_EQ(listener_.last->stop_reason(), "<|eot_id|>");
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_STOP);
}

// The token the scheduler ends a choice with opens the choice's last chunk:
// the stream's last message and the call's status then go out in one write.
TEST_F(GenerationSinkTest, TheEndingTokenGoesOutInTheLastChunk) {
  const std::vector<TokenId> ids = Encode("Hi there");
  ASSERT_GE(ids.size(), 2u);
  auto sink = MakeSink();
  for (size_t i = 0; i < ids.size(); ++i) {
    TokenEvent event = Event(ids[i]);
    event.ends_sequence = i + 1 == ids.size();
    EXPECT_TRUE(sink->OnToken(event));
  }
  EXPECT_EQ(listener_.chunks.size(), ids.size() - 1);
  sink->OnSequenceFinish(0, FinishReason::kLength);
  sink->OnFinish(Finished(FinishReason::kLength));

  EXPECT_EQ(listener_.chunks.size(), ids.size() - 1);
  ASSERT_TRUE(listener_.last.has_value());
  EXPECT_THAT(listener_.last->token_ids(), ElementsAreArray({ids.back()}));
  EXPECT_EQ(listener_.Text(), "Hi there");
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(listener_.last->usage().completion_tokens(), 3u);
}

TEST_F(GenerationSinkTest, AnEndingStopTokenGoesOutInTheLastChunk) {
  const std::optional<TokenId> eot = tokenizer_->TokenToId("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  auto sink = MakeSink();
  for (TokenId id : Encode("Hi")) EXPECT_TRUE(sink->OnToken(Event(id)));
  TokenEvent stop = Event(*eot, /*is_stop_token=*/true);
  stop.ends_sequence = true;
  EXPECT_FALSE(sink->OnToken(stop));
  sink->OnSequenceFinish(0, FinishReason::kStop);
  sink->OnFinish(Finished(FinishReason::kStop));

  EXPECT_EQ(listener_.Text(), "Hi");
  EXPECT_THAT(listener_.last->token_ids(), ElementsAreArray({*eot}));
  EXPECT_EQ(listener_.last->text(), "");
  EXPECT_EQ(listener_.last->stop_reason(), "<|eot_id|>");
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_STOP);
}

// A choice that ends before the last one sends its ending token in its own
// last chunk at once; a request cancelled right after a choice's ending
// token still sends the token.
TEST_F(GenerationSinkTest, EndingTokensOfEarlierAndCancelledChoicesAreSent) {
  auto sink = MakeSink({}, /*logprobs=*/false, /*n=*/3);
  const std::vector<TokenId> ids = Encode("Hi");
  ASSERT_FALSE(ids.empty());
  for (int32_t index : {0, 1, 2}) {
    TokenEvent event = Event(ids[0]);
    event.index = index;
    event.ends_sequence = true;
    sink->OnToken(event);
  }
  EXPECT_TRUE(listener_.chunks.empty());
  sink->OnSequenceFinish(0, FinishReason::kLength);
  ASSERT_EQ(listener_.chunks.size(), 1u);
  EXPECT_EQ(listener_.chunks[0].index(), 0u);
  EXPECT_THAT(listener_.chunks[0].token_ids(), ElementsAreArray({ids[0]}));
  EXPECT_EQ(listener_.chunks[0].finish_reason(), v1::FINISH_REASON_LENGTH);

  sink->OnFinish(Finished(FinishReason::kCancelled, absl::CancelledError()));
  EXPECT_EQ(listener_.status.code(), absl::StatusCode::kCancelled);
  // Choices 1 and 2 never finished on their own: their tokens still arrive.
  ASSERT_EQ(listener_.chunks.size(), 3u);
  for (uint32_t index : {1u, 2u}) {
    EXPECT_EQ(listener_.chunks[index].index(), index);
    EXPECT_THAT(listener_.chunks[index].token_ids(),
                ElementsAreArray({ids[0]}));
  }
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_CANCELLED);
}

TEST_F(GenerationSinkTest, GeneratedSpecialTokensAreNotShown) {
  const std::optional<TokenId> eot = tokenizer_->TokenToId("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  auto sink = MakeSink();
  // With ignore_eos the token is not a stop token, just special.
  for (TokenId id : Encode("a")) sink->OnToken(Event(id));
  EXPECT_TRUE(sink->OnToken(Event(*eot)));
  for (TokenId id : Encode("b")) sink->OnToken(Event(id));
  sink->OnFinish(Finished(FinishReason::kLength));
  EXPECT_EQ(listener_.Text(), "ab");
}

TEST_F(GenerationSinkTest, UnfinishedCharacterAtTheEndBecomesReplacement) {
  const std::vector<TokenId> ids = Encode("ö");
  ASSERT_EQ(ids.size(), 2u) << "fixture: ö is expected to be two byte tokens";
  auto sink = MakeSink();
  sink->OnToken(Event(ids[0]));
  sink->OnFinish(Finished(FinishReason::kLength));
  EXPECT_EQ(listener_.chunks[0].text(), "");
  EXPECT_EQ(listener_.last->text(), kUtf8Replacement);
}

TEST_F(GenerationSinkTest, HeldBackStopPrefixIsReleasedAtTheEnd) {
  auto sink = MakeSink({"llama!"});
  for (TokenId id : Encode("a tiny llama")) sink->OnToken(Event(id));
  sink->OnFinish(Finished(FinishReason::kLength));
  EXPECT_EQ(listener_.Text(), "a tiny llama");
  EXPECT_THAT(listener_.last->text(), HasSubstr("llama"));
  EXPECT_EQ(listener_.last->stop_reason(), "");
}

TEST_F(GenerationSinkTest, LogprobsCarryAlternativesWithText) {
  const std::vector<TokenId> ids = Encode("Hello");
  auto sink = MakeSink({}, /*logprobs=*/true);
  TokenEvent event = Event(ids[0]);
  event.sampled.logprob = -0.25f;
  event.sampled.top_logprobs = {{ids[0], -0.25f}, {ids[0] + 1, -2.0f}};
  sink->OnToken(event);

  ASSERT_EQ(listener_.chunks.size(), 1u);
  ASSERT_EQ(listener_.chunks[0].logprobs_size(), 1);
  const v1::TokenLogprob& logprob = listener_.chunks[0].logprobs(0);
  EXPECT_EQ(logprob.token_id(), ids[0]);
  EXPECT_FLOAT_EQ(logprob.logprob(), -0.25f);
  ASSERT_EQ(logprob.top_size(), 2);
  EXPECT_EQ(logprob.top(0).text(), tokenizer_->TokenBytes(ids[0]));
  EXPECT_EQ(logprob.top(1).token_id(), ids[0] + 1);
  EXPECT_FLOAT_EQ(logprob.top(1).logprob(), -2.0f);
}

TEST_F(GenerationSinkTest, NoLogprobsUnlessAsked) {
  auto sink = MakeSink();
  TokenEvent event = Event(Encode("Hi")[0]);
  event.sampled.top_logprobs = {{1, -1.0f}};
  sink->OnToken(event);
  EXPECT_EQ(listener_.chunks[0].logprobs_size(), 0);
}

TEST_F(GenerationSinkTest, CancellationCarriesItsStatusAndUsage) {
  auto sink = MakeSink();
  sink->OnToken(Event(Encode("Hi")[0]));
  sink->OnFinish(Finished(FinishReason::kCancelled,
                          absl::DeadlineExceededError("deadline passed")));
  EXPECT_EQ(listener_.status.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(listener_.last.has_value());
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_CANCELLED);
  const v1::Usage& usage = listener_.last->usage();
  EXPECT_EQ(usage.prompt_tokens(), 7u);
  EXPECT_EQ(usage.completion_tokens(), 3u);
  EXPECT_EQ(usage.cached_prompt_tokens(), 4u);
  EXPECT_DOUBLE_EQ(usage.queue_time_seconds(), 0.25);
  EXPECT_DOUBLE_EQ(usage.time_to_first_token_seconds(), 0.5);
}

TEST_F(GenerationSinkTest, ErrorWithoutStatusStillFails) {
  auto sink = MakeSink();
  sink->OnFinish(Finished(FinishReason::kError));
  EXPECT_EQ(listener_.status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_ERROR);
}

TEST_F(GenerationSinkTest, ChoicesDecodeAndStopOnTheirOwn) {
  auto sink = MakeSink({"llama"}, /*logprobs=*/false, /*n=*/3);
  auto event = [](TokenId id, int32_t index) {
    TokenEvent e = Event(id);
    e.index = index;
    return e;
  };
  // Interleaved as the scheduler delivers them: choice 1 meets the stop
  // string, choice 0 and 2 do not.
  const std::vector<TokenId> zero = Encode("a small cat");
  const std::vector<TokenId> one = Encode("a tiny llama runs");
  const std::vector<TokenId> two = Encode("ok");
  size_t stopped_at = one.size();
  for (size_t i = 0; i < std::max(zero.size(), one.size()); ++i) {
    if (i < zero.size()) {
      EXPECT_TRUE(sink->OnToken(event(zero[i], 0)));
    }
    if (i < one.size() && i <= stopped_at) {
      if (!sink->OnToken(event(one[i], 1))) {
        stopped_at = i;
        sink->OnSequenceFinish(1, FinishReason::kStop);
      }
    }
  }
  ASSERT_LT(stopped_at, one.size());
  for (TokenId id : two) EXPECT_TRUE(sink->OnToken(event(id, 2)));
  sink->OnSequenceFinish(2, FinishReason::kLength);
  sink->OnSequenceFinish(0, FinishReason::kLength);
  FinishInfo info = Finished(FinishReason::kLength);
  sink->OnFinish(info);

  std::map<uint32_t, std::string> texts;
  std::map<uint32_t, int> finishes;
  for (const auto& chunk : listener_.chunks) {
    texts[chunk.index()] += chunk.text();
    EXPECT_FALSE(chunk.has_usage());
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      ++finishes[chunk.index()];
    }
  }
  ASSERT_TRUE(listener_.last.has_value());
  // The choice that ended last (0) ends the stream, with the usage.
  EXPECT_EQ(listener_.last->index(), 0u);
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(listener_.last->usage().completion_tokens(), 3u);
  texts[0] += listener_.last->text();
  EXPECT_EQ(texts[0], "a small cat");
  EXPECT_EQ(texts[1], "a tiny ");
  EXPECT_EQ(texts[2], "ok");
  EXPECT_EQ(finishes[1], 1);
  EXPECT_EQ(finishes[2], 1);
  EXPECT_EQ(finishes[0], 0);  // in `last`
  for (const auto& chunk : listener_.chunks) {
    if (chunk.index() == 1 && chunk.finish_reason() != 0) {
      EXPECT_EQ(chunk.finish_reason(), v1::FINISH_REASON_STOP);
      EXPECT_EQ(chunk.stop_reason(), "llama");
    }
  }
  EXPECT_TRUE(listener_.status.ok());
  EXPECT_EQ(listener_.num_complete, 1);
}

TEST_F(GenerationSinkTest, CancelledChoicesEndWithTheRequestsStatus) {
  auto sink = MakeSink({}, /*logprobs=*/false, /*n=*/2);
  TokenEvent e = Event(Encode("Hi")[0]);
  e.index = 1;
  sink->OnToken(e);
  sink->OnSequenceFinish(1, FinishReason::kLength);
  sink->OnFinish(Finished(FinishReason::kCancelled, absl::CancelledError()));
  EXPECT_EQ(listener_.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(listener_.last->finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(listener_.num_complete, 1);
}

TEST_F(GenerationSinkTest, DetachedSinkDeliversNothing) {
  auto sink = MakeSink();
  sink->OnToken(Event(Encode("Hi")[0]));
  sink->Detach();
  sink->OnToken(Event(Encode("Hi")[0]));
  sink->OnFinish(Finished(FinishReason::kLength));
  EXPECT_EQ(listener_.chunks.size(), 1u);
  EXPECT_EQ(listener_.num_complete, 0);
}

// With an OutputWorker the engine thread only posts: decoding, the stop
// string and delivery run on the worker, which reports the stop through
// on_stop; tokens the engine ran past it are dropped and not counted; a
// length finish that raced the stop is reported as the stop.
TEST_F(GenerationSinkTest, WorkerDecodesOffTheEngineThreadAndReportsStops) {
  OutputWorker worker;
  std::vector<int32_t> stopped;  // written on the worker, read after WaitIdle
  std::thread::id decoded_on;
  struct ThreadListener : RecordingListener {
    std::thread::id* on;
    void OnChunk(v1::CompletionChunk chunk) override {
      *on = std::this_thread::get_id();
      RecordingListener::OnChunk(std::move(chunk));
    }
  } listener;
  listener.on = &decoded_on;
  auto sink = std::make_shared<GenerationSink>(
      GenerationSink::Options{
          .tokenizer = tokenizer_,
          .stop_strings = {"llama"},
          .worker = &worker,
          .on_stop = [&](int32_t index) { stopped.push_back(index); }},
      &listener);
  const std::vector<TokenId> ids = Encode("a tiny llama runs far");
  // The engine thread posts every token before the worker has run any (the
  // scheduler would have kept going too): each is accepted.
  {
    absl::Notification hold;
    worker.Post([&] { hold.WaitForNotification(); });
    for (TokenId id : ids) EXPECT_TRUE(sink->OnToken(Event(id)));
    hold.Notify();
  }
  ASSERT_TRUE(worker.WaitIdle(absl::Seconds(10)));
  EXPECT_NE(decoded_on, std::this_thread::get_id());
  EXPECT_EQ(stopped, std::vector<int32_t>{0});
  // Known to have stopped now: the engine is told so at once (the scheduler
  // has counted that token too).
  EXPECT_FALSE(sink->OnToken(Event(ids.back())));
  // The scheduler saw the length limit first.
  sink->OnSequenceFinish(0, FinishReason::kLength);
  FinishInfo info = Finished(FinishReason::kLength);
  info.stats.completion_tokens = static_cast<int32_t>(ids.size()) + 1;
  sink->OnFinish(info);
  ASSERT_TRUE(worker.WaitIdle(absl::Seconds(10)));
  ASSERT_TRUE(listener.last.has_value());
  EXPECT_EQ(listener.Text(), "a tiny ");
  EXPECT_EQ(listener.last->finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(listener.last->stop_reason(), "llama");
  // Tokens up to and including the one that completed "llama" count; the
  // ones after it were never shown.
  const size_t shown = listener.Ids().size();
  EXPECT_LT(shown, ids.size());
  EXPECT_EQ(listener.last->usage().completion_tokens(), shown);
}

}  // namespace
}  // namespace strata
