// Scheduler tests against a simulated engine: no model math, only the
// bookkeeping the real engine relies on. The simulated engine remembers what
// every KV slot holds (request, position, token) and checks, for every item
// of every plan, that the cached prefix it attends to is exactly its own
// tokens -- so a leaked, shared or stale block, or a preemption that loses or
// repeats a token, fails the test.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr int32_t kVocab = 1000;

// The "model": the next token is a pure function of the sequence so far, so
// recompute after preemption must reproduce it.
TokenId NextToken(std::span<const TokenId> tokens) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : tokens)
    h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return static_cast<TokenId>(h % kVocab);
}

class SimExecutor : public StepExecutor {
 public:
  SimExecutor(int32_t block_size, int32_t num_blocks, int32_t max_tokens,
              int32_t max_seqs)
      : block_size_(block_size),
        num_blocks_(num_blocks),
        max_tokens_(max_tokens),
        max_seqs_(max_seqs),
        slots_(static_cast<size_t>(block_size) * num_blocks) {}

  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override {
    ++steps_;
    EXPECT_LE(plan.NumTokens(), max_tokens_) << "token budget exceeded";
    EXPECT_LE(static_cast<int32_t>(plan.items.size()), max_seqs_);
    std::set<RequestId> ids;
    std::map<int32_t, int> table_refs;  // block -> items whose table has it
    std::set<int32_t> written;          // blocks written this step
    StepResult result;
    for (const WorkItem& item : plan.items) {
      EXPECT_TRUE(ids.insert(item.request_id).second) << "request twice";
      EXPECT_FALSE(item.tokens.empty());
      const int32_t end =
          item.start_position + static_cast<int32_t>(item.tokens.size());
      EXPECT_GE(static_cast<int32_t>(item.block_table.size()) * block_size_,
                end)
          << "block table too short";
      for (int32_t b : item.block_table) {
        EXPECT_GE(b, 0);
        EXPECT_LT(b, num_blocks_);
        ++table_refs[b];
      }
      for (int32_t p = item.start_position; p < end; ++p) {
        written.insert(item.block_table[p / block_size_]);
      }
      std::vector<TokenId> all(item.prompt_tokens.begin(),
                               item.prompt_tokens.end());
      all.insert(all.end(), item.output_tokens.begin(),
                 item.output_tokens.end());
      EXPECT_LE(end, static_cast<int32_t>(all.size()));
      // The cached prefix must hold this sequence's tokens (written by it
      // or, through the prefix cache, by another request with that prefix).
      for (int32_t p = 0; p < item.start_position; ++p) {
        const Slot& slot = SlotAt(item, p);
        EXPECT_EQ(slot.position, p) << "stale KV at position " << p;
        EXPECT_EQ(slot.token, all[p]) << "wrong KV at position " << p;
        if (slot.id != item.request_id) ++shared_reads_;
      }
      for (size_t j = 0; j < item.tokens.size(); ++j) {
        const int32_t p = item.start_position + static_cast<int32_t>(j);
        EXPECT_EQ(item.tokens[j], all[p]);
        SlotAt(item, p) = Slot{item.request_id, p, item.tokens[j]};
      }
      ItemResult r;
      r.request_id = item.request_id;
      EXPECT_EQ(item.sample, end == static_cast<int32_t>(all.size()));
      if (item.sample) {
        r.sampled = SampledToken{
            NextToken(std::span<const TokenId>(all).first(end)), -1.0f, {}};
      }
      result.items.push_back(r);
    }
    // A block written this step belongs to one table only: K/V shared
    // through the prefix cache is read, never overwritten.
    for (int32_t b : written) {
      EXPECT_EQ(table_refs[b], 1) << "block " << b << " written while shared";
    }
    if (fail_next_) {
      fail_next_ = false;
      return absl::InternalError("injected engine failure");
    }
    return result;
  }
  int32_t block_size() const override { return block_size_; }
  int32_t num_blocks() const override { return num_blocks_; }

  void FailNextStep() { fail_next_ = true; }
  int64_t steps() const { return steps_; }
  int64_t shared_reads() const { return shared_reads_; }

 private:
  struct Slot {
    RequestId id = 0;
    int32_t position = -1;
    TokenId token = -1;
  };
  Slot& SlotAt(const WorkItem& item, int32_t position) {
    const int32_t block = item.block_table[position / block_size_];
    return slots_[static_cast<size_t>(block) * block_size_ +
                  position % block_size_];
  }

  const int32_t block_size_, num_blocks_, max_tokens_, max_seqs_;
  std::vector<Slot> slots_;
  bool fail_next_ = false;
  int64_t steps_ = 0;
  int64_t shared_reads_ = 0;
};

class RecordingSink : public RequestSink {
 public:
  explicit RecordingSink(TokenId stop_after = -1) : stop_after_(stop_after) {}
  bool OnToken(const TokenEvent& event) override {
    EXPECT_EQ(finishes, 0) << "token after finish";
    tokens.push_back(event.sampled.token);
    return event.sampled.token != stop_after_;
  }
  void OnFinish(const FinishInfo& info) override {
    ++finishes;
    finish = info;
  }
  std::vector<TokenId> tokens;
  int finishes = 0;
  FinishInfo finish;

 private:
  TokenId stop_after_;
};

Scheduler::Options SmallOptions() {
  Scheduler::Options options;
  options.block_size = 4;
  options.num_blocks = 64;
  options.max_model_len = 128;
  options.max_num_seqs = 8;
  options.max_tokens_per_step = 32;
  return options;
}

// Runs steps until the scheduler is idle (bounded).
void RunToIdle(Scheduler& scheduler, SimExecutor& executor,
               int max_steps = 100000) {
  for (int i = 0; i < max_steps; ++i) {
    StepPlan plan = scheduler.Schedule();
    if (plan.items.empty()) {
      scheduler.Commit(StepResult{});
      if (scheduler.num_running() == 0 && scheduler.num_waiting() == 0) return;
      continue;
    }
    scheduler.Commit(executor.Execute(plan));
  }
  FAIL() << "scheduler did not go idle";
}

std::vector<TokenId> Expected(std::vector<TokenId> prompt, int32_t n) {
  std::vector<TokenId> out;
  for (int32_t i = 0; i < n; ++i) {
    const TokenId t = NextToken(prompt);
    out.push_back(t);
    prompt.push_back(t);
  }
  return out;
}

TEST(SchedulerTest, CreateRefusesAPoolSmallerThanOneSequence) {
  Scheduler::Options options = SmallOptions();
  options.num_blocks = 10;  // 40 tokens < 128
  auto scheduler = Scheduler::Create(options);
  EXPECT_EQ(scheduler.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(scheduler.status().message().find("max_model_len"),
            std::string::npos);
}

TEST(SchedulerTest, GeneratesToMaxTokensWithChunkedPrefill) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 70; ++i) spec.prompt.push_back(i + 1);  // > budget 32
  spec.max_tokens = 9;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->finish.reason, FinishReason::kLength);
  EXPECT_EQ(sink->tokens, Expected(spec.prompt, 9));
  EXPECT_EQ(sink->finish.stats.prompt_tokens, 70);
  EXPECT_EQ(sink->finish.stats.completion_tokens, 9);
  // 70 prompt tokens in chunks of 32: three prefill steps, 8 more decodes.
  EXPECT_EQ(executor.steps(), 3 + 8);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
}

TEST(SchedulerTest, StopTokenAndSinkStopEndWithStop) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  const std::vector<TokenId> prompt = {5, 6, 7};
  const std::vector<TokenId> expected = Expected(prompt, 10);

  auto by_token = std::make_shared<RecordingSink>();
  RequestSpec a;
  a.prompt = prompt;
  a.max_tokens = 10;
  a.stop_token_ids = {expected[3]};
  a.sink = by_token;
  ASSERT_TRUE(scheduler->Submit(a).ok());

  auto by_sink = std::make_shared<RecordingSink>(expected[5]);
  RequestSpec b = a;
  b.stop_token_ids.clear();
  b.sink = by_sink;
  ASSERT_TRUE(scheduler->Submit(b).ok());

  RunToIdle(*scheduler, executor);
  EXPECT_EQ(by_token->finish.reason, FinishReason::kStop);
  EXPECT_EQ(by_token->tokens,
            std::vector<TokenId>(expected.begin(), expected.begin() + 4));
  EXPECT_EQ(by_sink->finish.reason, FinishReason::kStop);
  EXPECT_EQ(by_sink->tokens,
            std::vector<TokenId>(expected.begin(), expected.begin() + 6));
}

TEST(SchedulerTest, AdmissionControlRejectsWithTheLimitNamed) {
  Scheduler::Options options = SmallOptions();
  options.max_waiting_requests = 2;
  options.max_waiting_tokens = 10;
  auto scheduler = *Scheduler::Create(options);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  spec.prompt = {1, 2, 3, 4};
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  auto third = scheduler->Submit(spec);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("max_waiting_requests"),
            std::string::npos);

  auto scheduler2 = *Scheduler::Create(options);
  ASSERT_TRUE(scheduler2->Submit(spec).ok());
  ASSERT_TRUE(scheduler2->Submit(spec).ok() == true);
  spec.prompt = {1, 2, 3};
  auto tokens = scheduler2->Submit(spec);  // 4 + 4 + 3 > 10
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerTest, RejectsPromptsThatFillTheContextAndWhenStopped) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  RequestSpec spec;
  spec.sink = std::make_shared<RecordingSink>();
  spec.prompt.assign(128, 1);
  EXPECT_EQ(scheduler->Submit(spec).status().code(),
            absl::StatusCode::kInvalidArgument);
  spec.prompt.assign(3, 1);
  scheduler->StopAccepting();
  EXPECT_EQ(scheduler->Submit(spec).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(SchedulerTest, CancelAndDeadlineEndRequestsAndFreeBlocks) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto cancelled = std::make_shared<RecordingSink>();
  auto expired = std::make_shared<RecordingSink>();
  RequestSpec spec;
  spec.prompt = {1, 2, 3};
  spec.max_tokens = 100;
  spec.sink = cancelled;
  const RequestId id = *scheduler->Submit(spec);
  spec.sink = expired;
  spec.deadline = absl::Now() - absl::Seconds(1);
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  // Two steps of decoding, then cancel.
  for (int i = 0; i < 2; ++i) {
    StepPlan plan = scheduler->Schedule();
    scheduler->Commit(executor.Execute(plan));
  }
  EXPECT_EQ(expired->finishes, 1);
  EXPECT_EQ(expired->finish.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GT(scheduler->num_blocks_used(), 0);
  scheduler->Cancel(id);
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(cancelled->finishes, 1);
  EXPECT_EQ(cancelled->finish.reason, FinishReason::kCancelled);
  EXPECT_EQ(cancelled->finish.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(cancelled->tokens.size(), 2u);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
}

TEST(SchedulerTest, EngineFailureEndsThatStepsRequestsWithError) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  spec.prompt = {1, 2, 3};
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  executor.FailNextStep();
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->finish.reason, FinishReason::kError);
  EXPECT_EQ(sink->finish.status.code(), absl::StatusCode::kInternal);
  // The scheduler keeps serving.
  auto next = std::make_shared<RecordingSink>();
  spec.sink = next;
  spec.max_tokens = 3;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(next->tokens, Expected(spec.prompt, 3));
}

TEST(SchedulerTest, DestructorFinishesHeldRequests) {
  auto sink = std::make_shared<RecordingSink>();
  {
    auto scheduler = *Scheduler::Create(SmallOptions());
    RequestSpec spec;
    spec.prompt = {1};
    spec.sink = sink;
    ASSERT_TRUE(scheduler->Submit(spec).ok());
  }
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->finish.status.code(), absl::StatusCode::kUnavailable);
}

TEST(SchedulerTest, SecondRequestReusesTheCachedPrefix) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  RequestSpec spec;
  for (int i = 0; i < 18; ++i) spec.prompt.push_back(100 + i);
  spec.max_tokens = 2;
  auto first = std::make_shared<RecordingSink>();
  spec.sink = first;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(first->finish.stats.cached_prompt_tokens, 0);

  auto second = std::make_shared<RecordingSink>();
  spec.sink = second;
  spec.prompt.push_back(7);  // same 18-token prefix, one more token
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  StepPlan plan = scheduler->Schedule();
  ASSERT_EQ(plan.items.size(), 1u);
  // Four full blocks of 4 are cached: only the last 3 tokens are computed.
  EXPECT_EQ(plan.items[0].start_position, 16);
  EXPECT_EQ(plan.items[0].tokens.size(), 3u);
  scheduler->Commit(executor.Execute(plan));
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(second->finish.stats.cached_prompt_tokens, 16);
  EXPECT_EQ(second->tokens, Expected(spec.prompt, 2));
  EXPECT_TRUE(scheduler->CheckConsistency().ok());
}

TEST(SchedulerTest, StaticBatchingWaitsForTheWholeBatch) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 2;
  options.static_batching = true;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 2);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int32_t max_tokens : {2, 6, 2}) {
    RequestSpec spec;
    spec.prompt = {1, 2, 3};
    spec.max_tokens = max_tokens;
    sinks.push_back(std::make_shared<RecordingSink>());
    spec.sink = sinks.back();
    ASSERT_TRUE(scheduler->Submit(spec).ok());
  }
  // The third request starts only after the 6-token one ends, although a
  // slot frees after two steps.
  int steps_before_third = 0;
  while (sinks[1]->finishes == 0) {
    StepPlan plan = scheduler->Schedule();
    for (const WorkItem& item : plan.items) EXPECT_NE(item.request_id, 3u);
    scheduler->Commit(executor.Execute(plan));
    ++steps_before_third;
  }
  EXPECT_EQ(steps_before_third, 6);
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sinks[2]->tokens.size(), 2u);
}

TEST(SchedulerTest, HigherPriorityIsAdmittedFirst) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 1;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 1);
  std::vector<RequestId> order;
  RequestSpec spec;
  spec.prompt = {1, 2};
  spec.max_tokens = 1;
  spec.sink = std::make_shared<RecordingSink>();
  const RequestId low = *scheduler->Submit(spec);
  spec.priority = 5;
  spec.sink = std::make_shared<RecordingSink>();
  const RequestId high = *scheduler->Submit(spec);
  for (int i = 0; i < 2; ++i) {
    StepPlan plan = scheduler->Schedule();
    ASSERT_EQ(plan.items.size(), 1u);
    order.push_back(plan.items[0].request_id);
    scheduler->Commit(executor.Execute(plan));
  }
  EXPECT_EQ(order, (std::vector<RequestId>{high, low}));
}

// Thousands of steps of random traffic on tiny and large pools: every request
// ends exactly once with exactly its expected tokens, no block leaks, budgets
// hold (checked inside SimExecutor), and preemption actually happens.
class SchedulerSimulationTest
    : public ::testing::TestWithParam<std::tuple<int32_t, bool>> {};

TEST_P(SchedulerSimulationTest, RandomTraffic) {
  const auto [num_blocks, prefix_caching] = GetParam();
  Scheduler::Options options;
  options.enable_prefix_caching = prefix_caching;
  options.block_size = 4;
  options.num_blocks = num_blocks;
  options.max_model_len = 64;
  options.max_num_seqs = 6;
  options.max_tokens_per_step = 24;
  options.max_waiting_requests = 40;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, num_blocks, 24, 6);
  std::mt19937 rng(1234 + num_blocks);
  std::vector<std::string> shared_prefixes;

  struct Submitted {
    RequestSpec spec;
    std::shared_ptr<RecordingSink> sink;
    RequestId id;
    bool cancel_sent = false;
  };
  std::vector<Submitted> submitted;
  int rejected = 0;
  for (int step = 0; step < 4000; ++step) {
    if (rng() % 3 == 0) {
      Submitted s;
      const int32_t len = 1 + rng() % 40;
      // Shared prefixes: half the prompts start with one of a few prefixes.
      const int prefix = rng() % 6;
      for (int32_t i = 0; i < len; ++i) {
        s.spec.prompt.push_back(prefix < 3 && i < 12 ? 7 * prefix + i
                                                     : rng() % kVocab);
      }
      s.spec.max_tokens = 1 + rng() % 30;
      s.spec.priority = rng() % 4 == 0 ? 1 : 0;
      if (rng() % 10 == 0)
        s.spec.stop_token_ids = {static_cast<TokenId>(rng() % kVocab)};
      s.sink = std::make_shared<RecordingSink>();
      s.spec.sink = s.sink;
      auto id = scheduler->Submit(s.spec);
      if (!id.ok()) {
        EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
        ++rejected;
      } else {
        s.id = *id;
        submitted.push_back(std::move(s));
      }
    }
    if (!submitted.empty() && rng() % 25 == 0) {
      Submitted& victim = submitted[rng() % submitted.size()];
      scheduler->Cancel(victim.id);
      victim.cancel_sent = true;
    }
    StepPlan plan = scheduler->Schedule();
    scheduler->Commit(executor.Execute(plan));
    EXPECT_LE(scheduler->num_blocks_used(), num_blocks);
    const absl::Status consistent = scheduler->CheckConsistency();
    ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
  }
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
  EXPECT_TRUE(scheduler->CheckConsistency().ok());
  if (prefix_caching) {
    EXPECT_GT(scheduler->prefix_hit_tokens(), 0);
    EXPECT_GT(executor.shared_reads(), 0);
  } else {
    EXPECT_EQ(scheduler->prefix_hit_tokens(), 0);
  }
  int cancelled = 0;
  for (const Submitted& s : submitted) {
    ASSERT_EQ(s.sink->finishes, 1);
    // Capped by the context: prompt + output <= max_model_len.
    const auto expected = Expected(
        s.spec.prompt,
        std::min<int32_t>(s.spec.max_tokens,
                          options.max_model_len -
                              static_cast<int32_t>(s.spec.prompt.size())));
    // Whatever arrived is a prefix of the expected output: never a repeated
    // or missing token, also across preemptions.
    ASSERT_LE(s.sink->tokens.size(), expected.size());
    EXPECT_TRUE(std::equal(s.sink->tokens.begin(), s.sink->tokens.end(),
                           expected.begin()));
    switch (s.sink->finish.reason) {
      case FinishReason::kLength:
        EXPECT_EQ(s.sink->tokens.size(), expected.size());
        break;
      case FinishReason::kStop:
        ASSERT_FALSE(s.sink->tokens.empty());
        EXPECT_EQ(s.sink->tokens.back(), s.spec.stop_token_ids.at(0));
        break;
      case FinishReason::kCancelled:
        EXPECT_TRUE(s.cancel_sent);
        ++cancelled;
        break;
      case FinishReason::kError:
        ADD_FAILURE() << "unexpected error " << s.sink->finish.status;
    }
  }
  EXPECT_GT(submitted.size(), 300u);
  EXPECT_GT(cancelled, 0);
  if (num_blocks <= 24) {
    EXPECT_GT(scheduler->num_preemptions(), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Pools, SchedulerSimulationTest,
                         ::testing::Combine(::testing::Values(16, 24, 64, 1024),
                                            ::testing::Bool()));

}  // namespace
}  // namespace strata
