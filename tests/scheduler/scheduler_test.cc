// Scheduler tests against a simulated engine: no model math, only the
// bookkeeping the real engine relies on. The simulated engine remembers what
// every KV slot holds (request, position, token) and checks, for every item
// of every plan, that the cached prefix it attends to is exactly its own
// tokens -- so a leaked, shared or stale block, or a preemption that loses or
// repeats a token, fails the test.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr int32_t kVocab = 1000;

// The "model": the next token is a pure function of the sequence so far and
// the sampling seed, so recompute after preemption must reproduce it, and
// the siblings of an n > 1 request (seed + i) diverge.
TokenId NextToken(std::span<const TokenId> tokens, uint64_t seed = 0) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9e3779b97f4a7c15ull);
  for (TokenId t : tokens)
    h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return static_cast<TokenId>(h % kVocab);
}

// For recursive models (num_loops > 1) it also plays the loops: every KV slot
// is remembered per loop, an item must continue from the state the engine
// kept for exactly its positions and loop, each loop's attention must find
// every earlier position written at that loop (so recompute fills ran ahead
// of the next token), and decode tokens that carry exit parameters exit early
// at random, leaving propagated K/V or a fill to recompute.
class SimExecutor : public StepExecutor {
 public:
  struct Loops {
    int32_t num_loops = 1;
    bool recompute = false;     // KV fill policy (else propagate)
    double exit_rate = 0.3;     // chance an exit-eligible boundary exits
    bool prompt_exits = false;  // prompt tokens may carry exit rules
  };

  SimExecutor(int32_t block_size, int32_t num_blocks, int32_t max_tokens,
              int32_t max_seqs)
      : SimExecutor(block_size, num_blocks, max_tokens, max_seqs, Loops()) {}
  SimExecutor(int32_t block_size, int32_t num_blocks, int32_t max_tokens,
              int32_t max_seqs, Loops loops)
      : block_size_(block_size),
        num_blocks_(num_blocks),
        max_tokens_(max_tokens),
        max_seqs_(max_seqs),
        loops_(loops),
        slots_(static_cast<size_t>(loops.num_loops) * block_size * num_blocks),
        rng_(99) {}

  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override {
    ++steps_;
    const int32_t num_loops = loops_.num_loops;
    // Copy-on-write first, in order, as the engine does (every loop).
    for (const BlockCopy& copy : plan.block_copies) {
      EXPECT_NE(copy.src, copy.dst);
      EXPECT_GE(copy.src, 0);
      EXPECT_LT(copy.src, num_blocks_);
      EXPECT_GE(copy.dst, 0);
      EXPECT_LT(copy.dst, num_blocks_);
      for (int32_t l = 0; l < num_loops; ++l) {
        const size_t base = static_cast<size_t>(l) * num_blocks_ * block_size_;
        std::copy_n(
            slots_.begin() + base + static_cast<size_t>(copy.src) * block_size_,
            block_size_,
            slots_.begin() + base +
                static_cast<size_t>(copy.dst) * block_size_);
      }
      ++copies_;
    }
    EXPECT_LE(plan.NumTokens(), max_tokens_) << "token budget exceeded";
    std::set<RequestId> ids;
    std::map<RequestId, size_t> last_item;  // request -> its previous item
    std::map<int32_t, std::set<RequestId>> table_refs;  // block -> requests
    std::set<int32_t> written;  // blocks written this step
    struct Run {
      std::vector<TokenId> all;  // the sequence's tokens
      int32_t loop = 0;          // next loop to run
      int32_t loop_end = 0;
      int32_t end = 0;  // one past the item's last position
      bool exited = false;
    };
    std::vector<Run> runs(plan.items.size());
    StepResult result;
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const WorkItem& item = plan.items[i];
      // Items of one request (its fills, then its own tokens): in position
      // order, each no deeper than the one before, as the engine requires.
      if (const auto prev = last_item.find(item.request_id);
          prev != last_item.end()) {
        const WorkItem& earlier = plan.items[prev->second];
        EXPECT_FALSE(earlier.sample) << "two items of one request sample";
        EXPECT_LT(earlier.start_position, item.start_position);
        EXPECT_GE(earlier.loop_begin, item.loop_begin);
        // An earlier item that may exit has its skipped loops written after
        // the step: a later one must not run past its first loop.
        if (earlier.exit != nullptr) {
          EXPECT_LE(item.loop_end < 0 ? num_loops : item.loop_end,
                    earlier.loop_begin + 1)
              << "reads past the loop of an item that may exit";
        }
      }
      last_item[item.request_id] = i;
      ids.insert(item.request_id);
      EXPECT_FALSE(item.tokens.empty());
      Run& run = runs[i];
      run.end = item.start_position + static_cast<int32_t>(item.tokens.size());
      EXPECT_GE(static_cast<int32_t>(item.block_table.size()) * block_size_,
                run.end)
          << "block table too short";
      for (int32_t b : item.block_table) {
        EXPECT_GE(b, 0);
        EXPECT_LT(b, num_blocks_);
        table_refs[b].insert(item.request_id);
      }
      for (int32_t p = item.start_position; p < run.end; ++p) {
        written.insert(item.block_table[p / block_size_]);
      }
      run.all.assign(item.prompt_tokens.begin(), item.prompt_tokens.end());
      run.all.insert(run.all.end(), item.output_tokens.begin(),
                     item.output_tokens.end());
      EXPECT_LE(run.end, static_cast<int32_t>(run.all.size()));
      for (size_t j = 0; j < item.tokens.size(); ++j) {
        EXPECT_EQ(item.tokens[j], run.all[item.start_position + j]);
      }
      run.loop = item.loop_begin;
      run.loop_end = item.loop_end < 0 ? num_loops : item.loop_end;
      EXPECT_LT(run.loop, run.loop_end);
      EXPECT_LE(run.loop_end, num_loops);
      const StateKey key{item.request_id, item.start_position};
      if (item.kv_fill) {
        EXPECT_EQ(item.tokens.size(), 1u);
        EXPECT_FALSE(item.sample);
        const auto it = pending_fills_.find(key);
        if (it == pending_fills_.end()) {
          ADD_FAILURE() << "fill without an exit";
        } else {
          EXPECT_EQ(it->second, run.loop) << "fill from the wrong loop";
          pending_fills_.erase(it);
        }
      } else if (run.loop > 0) {
        const auto it = states_.find(key);
        if (it == states_.end()) {
          ADD_FAILURE() << "continues without a kept state";
        } else {
          EXPECT_EQ(it->second.loops_done, run.loop);
          EXPECT_EQ(it->second.num_tokens,
                    static_cast<int32_t>(item.tokens.size()));
          states_.erase(it);
        }
      }
      if (item.exit != nullptr) {
        EXPECT_EQ(item.tokens.size(), 1u);
        const bool prompt = item.start_position <
                            static_cast<int32_t>(item.prompt_tokens.size());
        if (prompt) {
          EXPECT_TRUE(loops_.prompt_exits) << "a prompt token may not exit";
          EXPECT_NE(item.start_position,
                    static_cast<int32_t>(item.prompt_tokens.size()) - 1)
              << "the prompt's last token exits";
          EXPECT_EQ(run.loop_end, run.loop + 1)
              << "a prompt token that may exit runs loops in one step";
        } else if (!item.sample) {
          // A generated token recomputed after a preemption in a chunk
          // that began in the prompt goes token by token too.
          EXPECT_TRUE(loops_.prompt_exits) << "a token exits without sampling";
          EXPECT_EQ(run.loop_end, run.loop + 1);
        }
      }
    }
    // Rounds, as the engine runs them: every item runs its next loop; each
    // loop's K/V of all rows is written before any row attends; the K/V
    // propagated to loops an exit skipped after the last round.
    std::vector<std::pair<size_t, int32_t>> propagated;  // item, exit loop
    for (int32_t round = 0; round < num_loops; ++round) {
      for (size_t i = 0; i < plan.items.size(); ++i) {
        const WorkItem& item = plan.items[i];
        Run& run = runs[i];
        if (run.exited || run.loop >= run.loop_end) continue;
        for (int32_t p = item.start_position; p < run.end; ++p) {
          SlotAt(item, run.loop, p) = Slot{item.request_id, p, run.all[p]};
        }
      }
      for (size_t i = 0; i < plan.items.size(); ++i) {
        const WorkItem& item = plan.items[i];
        Run& run = runs[i];
        if (run.exited || run.loop >= run.loop_end) continue;
        // The prefix this loop attends to must hold the sequence's tokens
        // at this loop (own, prefix-cached, copied or propagated).
        for (int32_t p = 0; p < item.start_position; ++p) {
          const Slot& slot = SlotAt(item, run.loop, p);
          EXPECT_EQ(slot.position, p)
              << "stale KV at position " << p << " loop " << run.loop;
          EXPECT_EQ(slot.token, run.all[p])
              << "wrong KV at position " << p << " loop " << run.loop;
          if (slot.id != item.request_id) ++shared_reads_;
        }
        const int32_t loop = run.loop++;
        if (item.exit != nullptr && loop < num_loops - 1 &&
            loop >= item.exit->min_loops - 1 &&
            std::bernoulli_distribution(loops_.exit_rate)(rng_)) {
          run.exited = true;
          ++exits_;
          if (loops_.recompute) {
            pending_fills_[{item.request_id, item.start_position}] = loop + 1;
          } else {
            propagated.emplace_back(i, loop);
          }
          run.loop_end = loop + 1;
        }
      }
    }
    for (const auto& [i, loop] : propagated) {
      const WorkItem& item = plan.items[i];
      for (int32_t l = loop + 1; l < num_loops; ++l) {
        SlotAt(item, l, item.start_position) =
            Slot{item.request_id, item.start_position,
                 runs[i].all[item.start_position]};
      }
    }
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const WorkItem& item = plan.items[i];
      const Run& run = runs[i];
      ItemResult r;
      r.request_id = item.request_id;
      r.loops_done = run.loop;
      const bool finished = run.exited || run.loop == num_loops;
      r.exit_loop = finished ? run.loop - 1 : -1;
      r.needs_kv_fill = run.exited && loops_.recompute;
      if (!finished) {
        states_[{item.request_id, item.start_position}] =
            State{run.loop, static_cast<int32_t>(item.tokens.size())};
      }
      EXPECT_EQ(item.sample, run.end == static_cast<int32_t>(run.all.size()));
      if (item.sample && finished) {
        EXPECT_NE(item.sampling, nullptr);
        r.sampled = SampledToken{
            NextToken(std::span<const TokenId>(run.all).first(run.end),
                      item.sampling == nullptr ? 0 : item.sampling->seed),
            -1.0f,
            {}};
      }
      result.items.push_back(r);
    }
    // A block written this step belongs to one request only: K/V shared
    // through the prefix cache is read, never overwritten.
    for (int32_t b : written) {
      EXPECT_EQ(table_refs[b].size(), 1u)
          << "block " << b << " written while shared";
    }
    EXPECT_LE(static_cast<int32_t>(ids.size()), max_seqs_);
    if (fail_next_) {
      fail_next_ = false;
      return absl::InternalError("injected engine failure");
    }
    return result;
  }
  void ReleaseState(RequestId request) override {
    std::erase_if(states_,
                  [&](const auto& kv) { return kv.first.id == request; });
    std::erase_if(pending_fills_,
                  [&](const auto& kv) { return kv.first.id == request; });
  }
  int32_t block_size() const override { return block_size_; }
  int32_t num_blocks() const override { return num_blocks_; }

  void FailNextStep() { fail_next_ = true; }
  int64_t steps() const { return steps_; }
  int64_t shared_reads() const { return shared_reads_; }
  int64_t copies() const { return copies_; }
  int64_t exits() const { return exits_; }
  // Hidden states and fills still kept (0 once every request ended).
  size_t kept_states() const { return states_.size() + pending_fills_.size(); }

 private:
  struct Slot {
    RequestId id = 0;
    int32_t position = -1;
    TokenId token = -1;
  };
  struct StateKey {
    RequestId id;
    int32_t position;
    bool operator<(const StateKey& o) const {
      return std::tie(id, position) < std::tie(o.id, o.position);
    }
  };
  struct State {
    int32_t loops_done = 0;
    int32_t num_tokens = 0;
  };
  Slot& SlotAt(const WorkItem& item, int32_t loop, int32_t position) {
    const int32_t block = item.block_table[position / block_size_];
    return slots_[(static_cast<size_t>(loop) * num_blocks_ + block) *
                      block_size_ +
                  position % block_size_];
  }

  const int32_t block_size_, num_blocks_, max_tokens_, max_seqs_;
  const Loops loops_;
  std::vector<Slot> slots_;  // [loop][block][offset]
  std::map<StateKey, State> states_;
  std::map<StateKey, int32_t> pending_fills_;  // -> next loop to run
  std::mt19937 rng_;
  bool fail_next_ = false;
  int64_t steps_ = 0;
  int64_t shared_reads_ = 0;
  int64_t copies_ = 0;
  int64_t exits_ = 0;
};

// Records what a request's sink hears, per choice, and fails on a token
// after its choice or the request ended, or a choice ending twice.
class RecordingSink : public RequestSink {
 public:
  explicit RecordingSink(TokenId stop_after = -1) : stop_after_(stop_after) {}
  bool OnToken(const TokenEvent& event) override {
    EXPECT_EQ(finishes, 0) << "token after finish";
    EXPECT_EQ(choice_reasons.count(event.index), 0u)
        << "token after choice " << event.index << " ended";
    choice_tokens[event.index].push_back(event.sampled.token);
    if (event.index == 0) tokens.push_back(event.sampled.token);
    return event.sampled.token != stop_after_;
  }
  void OnSequenceFinish(int32_t index, FinishReason reason) override {
    EXPECT_EQ(finishes, 0) << "choice ended after the request";
    EXPECT_TRUE(choice_reasons.emplace(index, reason).second)
        << "choice " << index << " ended twice";
  }
  void OnFinish(const FinishInfo& info) override {
    ++finishes;
    finish = info;
  }
  std::vector<TokenId> tokens;  // choice 0
  std::map<int32_t, std::vector<TokenId>> choice_tokens;
  std::map<int32_t, FinishReason> choice_reasons;  // OnSequenceFinish
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

// What the engine loop does after Schedule(): drop the engine-side state of
// sequences that ended or were preempted.
void ReleaseStates(Scheduler& scheduler, SimExecutor& executor) {
  for (const RequestId id : scheduler.TakeReleasedStates()) {
    executor.ReleaseState(id);
  }
}

// Runs steps until the scheduler is idle (bounded).
void RunToIdle(Scheduler& scheduler, SimExecutor& executor,
               int max_steps = 100000) {
  for (int i = 0; i < max_steps; ++i) {
    StepPlan plan = scheduler.Schedule();
    ReleaseStates(scheduler, executor);
    if (plan.items.empty()) {
      scheduler.Commit(StepResult{});
      if (scheduler.num_running() == 0 && scheduler.num_waiting() == 0) return;
      continue;
    }
    scheduler.Commit(executor.Execute(plan));
  }
  FAIL() << "scheduler did not go idle";
}

std::vector<TokenId> Expected(std::vector<TokenId> prompt, int32_t n,
                              uint64_t seed = 0) {
  std::vector<TokenId> out;
  for (int32_t i = 0; i < n; ++i) {
    const TokenId t = NextToken(prompt, seed);
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

// num_requests() counts a request from Submit until its sink's OnFinish
// has run, through admission (where num_waiting() drops before
// num_running() rises), preemption-free decoding, n > 1 and cancellation;
// a refused Submit never counts. A drain waits on it.
TEST(SchedulerTest, NumRequestsCountsEveryRequestUntilItsFinish) {
  Scheduler::Options options = SmallOptions();
  options.max_waiting_requests = 3;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 8);
  // Records num_requests() as the sink hears its tokens and its finish.
  class CountingSink : public RecordingSink {
   public:
    explicit CountingSink(const Scheduler* scheduler) : scheduler_(scheduler) {}
    bool OnToken(const TokenEvent& event) override {
      min_during = std::min(min_during, scheduler_->num_requests());
      return RecordingSink::OnToken(event);
    }
    void OnFinish(const FinishInfo& info) override {
      at_finish = scheduler_->num_requests();
      RecordingSink::OnFinish(info);
    }
    int32_t min_during = 1 << 30;
    int32_t at_finish = -1;

   private:
    const Scheduler* scheduler_;
  };
  std::vector<std::shared_ptr<CountingSink>> sinks;
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<CountingSink>(scheduler.get()));
    RequestSpec spec;
    spec.prompt = {1, 2, 3, static_cast<TokenId>(4 + i)};
    spec.max_tokens = 3 + 2 * i;
    spec.n = i == 1 ? 2 : 1;
    spec.sink = sinks.back();
    absl::StatusOr<RequestId> id = scheduler->Submit(spec);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  EXPECT_EQ(scheduler->num_requests(), 3);
  RequestSpec refused;
  refused.prompt = {9};
  refused.sink = std::make_shared<RecordingSink>();
  EXPECT_FALSE(scheduler->Submit(refused).ok());  // the queue is full
  EXPECT_EQ(scheduler->num_requests(), 3);

  // The first step admits all three: none waits, all count.
  StepPlan plan = scheduler->Schedule();
  ReleaseStates(*scheduler, executor);
  EXPECT_EQ(scheduler->num_waiting(), 0);
  EXPECT_EQ(scheduler->num_requests(), 3);
  scheduler->Commit(executor.Execute(plan));
  EXPECT_EQ(scheduler->num_requests(), 3);
  scheduler->Cancel(ids[2]);
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(scheduler->num_requests(), 0);
  // Each still counts as its finish runs, and the count falls by one per
  // finished request: 3, 2, 1 in the order they ended.
  std::vector<int32_t> at_finish;
  for (const auto& sink : sinks) at_finish.push_back(sink->at_finish);
  std::sort(at_finish.begin(), at_finish.end());
  EXPECT_EQ(at_finish, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(sinks[2]->finish.reason, FinishReason::kCancelled);
  EXPECT_EQ(sinks[1]->choice_tokens.size(), 2u);
  for (const auto& sink : sinks) EXPECT_GE(sink->min_during, 1);
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

// ---- n > 1 samples of one prompt ----

// After Schedule(): every copy reads a block that was shared before the step
// (Schedule only lowers a partly filled block's reference count, so the
// count before the step bounds the one at the copy) and writes a block that
// only the copying item holds, the one receiving its first new token.
void CheckCopies(const Scheduler& scheduler, const StepPlan& plan,
                 const std::vector<int32_t>& refs_before, int32_t block_size) {
  std::set<int32_t> dsts;
  for (const BlockCopy& copy : plan.block_copies) {
    EXPECT_GE(refs_before[copy.src], 2)
        << "copy from block " << copy.src << " that was not shared";
    EXPECT_EQ(scheduler.block_ref_count(copy.dst), 1)
        << "copy into block " << copy.dst << " that is not the copier's own";
    EXPECT_TRUE(dsts.insert(copy.dst).second) << "two copies into one block";
    std::set<RequestId> holders;
    for (const WorkItem& item : plan.items) {
      const auto it =
          std::find(item.block_table.begin(), item.block_table.end(), copy.dst);
      if (it == item.block_table.end() || item.kv_fill) continue;
      holders.insert(item.request_id);
      EXPECT_EQ(it - item.block_table.begin(), item.start_position / block_size)
          << "copy into a block the item does not write first";
      EXPECT_NE(item.start_position % block_size, 0)
          << "copy of a block the item starts empty";
    }
    EXPECT_EQ(holders.size(), 1u) << "copy into block " << copy.dst;
  }
}

std::vector<int32_t> RefCounts(const Scheduler& scheduler) {
  std::vector<int32_t> refs(scheduler.options().num_blocks);
  for (int32_t b = 0; b < static_cast<int32_t>(refs.size()); ++b) {
    refs[b] = scheduler.block_ref_count(b);
  }
  return refs;
}

// One Schedule/Execute/Commit with the copy and consistency checks.
StepPlan Step(Scheduler& scheduler, SimExecutor& executor) {
  const std::vector<int32_t> refs_before = RefCounts(scheduler);
  StepPlan plan = scheduler.Schedule();
  CheckCopies(scheduler, plan, refs_before, scheduler.options().block_size);
  scheduler.Commit(plan.items.empty() ? absl::StatusOr<StepResult>(StepResult{})
                                      : executor.Execute(plan));
  const absl::Status consistent = scheduler.CheckConsistency();
  EXPECT_TRUE(consistent.ok()) << consistent;
  return plan;
}

TEST(SchedulerNTest, PromptIsComputedOnceThenEachChoiceSamplesWithItsSeed) {
  auto scheduler = *Scheduler::Create(SmallOptions());  // blocks of 4
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 10; ++i) spec.prompt.push_back(200 + i);
  spec.n = 3;
  spec.sampling.seed = 100;
  spec.max_tokens = 6;
  spec.sink = sink;
  const RequestId id = *scheduler->Submit(spec);

  // Step 1: the prompt but its last token, once (it fills 2 blocks and 1
  // slot of a third).
  StepPlan plan = Step(*scheduler, executor);
  ASSERT_EQ(plan.items.size(), 1u);
  EXPECT_EQ(plan.items[0].request_id, id);
  EXPECT_EQ(plan.items[0].tokens.size(), 9u);
  EXPECT_FALSE(plan.items[0].sample);
  EXPECT_TRUE(plan.block_copies.empty());
  EXPECT_EQ(scheduler->num_blocks_used(), 3);

  // Step 2: three sequences run the last prompt token at position 9, in the
  // shared third block: the first two copy it, the last writes in place.
  plan = Step(*scheduler, executor);
  ASSERT_EQ(plan.items.size(), 3u);
  std::set<RequestId> ids;
  for (const WorkItem& item : plan.items) {
    ids.insert(item.request_id);
    EXPECT_EQ(item.start_position, 9);
    EXPECT_EQ(item.tokens.size(), 1u);
    EXPECT_TRUE(item.sample);
    EXPECT_EQ(item.block_table[0], plan.items[0].block_table[0]);
    EXPECT_EQ(item.block_table[1], plan.items[0].block_table[1]);
  }
  EXPECT_EQ(ids.size(), 3u) << "each sequence has its own item id";
  EXPECT_EQ(plan.block_copies.size(), 2u);
  EXPECT_EQ(scheduler->num_blocks_used(), 5);
  EXPECT_EQ(scheduler->num_running(), 1);  // one request

  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
  ASSERT_EQ(sink->choice_tokens.size(), 3u);
  for (int32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(sink->choice_tokens[i], Expected(spec.prompt, 6, 100 + i))
        << "choice " << i;
    EXPECT_EQ(sink->choice_reasons.at(i), FinishReason::kLength);
  }
  EXPECT_NE(sink->choice_tokens[0], sink->choice_tokens[1]);
  EXPECT_EQ(sink->finish.reason, FinishReason::kLength);
  EXPECT_TRUE(sink->finish.status.ok());
  EXPECT_EQ(sink->finish.stats.prompt_tokens, 10);
  EXPECT_EQ(sink->finish.stats.completion_tokens, 18);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
  // 9 + 3 prompt tokens and 3 * 5 decode tokens were computed, not 3 * 15.
  EXPECT_EQ(executor.copies(), 2);
}

TEST(SchedulerNTest, ALastPromptTokenThatStartsABlockNeedsNoCopy) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 9; ++i) spec.prompt.push_back(300 + i);  // 8 + 1
  spec.n = 4;
  spec.sampling.seed = 7;
  spec.max_tokens = 5;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  while (sink->finishes == 0) {
    const StepPlan plan = Step(*scheduler, executor);
    EXPECT_TRUE(plan.block_copies.empty());
  }
  for (int32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(sink->choice_tokens[i], Expected(spec.prompt, 5, 7 + i));
  }
  EXPECT_EQ(executor.copies(), 0);
}

TEST(SchedulerNTest, OneTokenPromptStartsTheSequencesApart) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  spec.prompt = {42};
  spec.n = 3;
  spec.sampling.seed = 5;
  spec.max_tokens = 4;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  EXPECT_EQ(scheduler->num_waiting(), 3);
  const StepPlan plan = Step(*scheduler, executor);
  EXPECT_EQ(plan.items.size(), 3u);
  RunToIdle(*scheduler, executor);
  for (int32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(sink->choice_tokens[i], Expected(spec.prompt, 4, 5 + i));
  }
  EXPECT_EQ(sink->finish.stats.completion_tokens, 12);
}

TEST(SchedulerNTest, EachChoiceStopsOnItsOwn) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  RequestSpec spec;
  for (int i = 0; i < 6; ++i) spec.prompt.push_back(10 + i);
  spec.n = 3;
  spec.sampling.seed = 1000;
  spec.max_tokens = 8;
  // Choice 1 meets a stop token at its third token, choice 2 a stop string
  // (the sink says stop) at its fifth; choice 0 runs to max_tokens.
  const std::vector<TokenId> one = Expected(spec.prompt, 8, 1001);
  const std::vector<TokenId> two = Expected(spec.prompt, 8, 1002);
  const std::vector<TokenId> zero = Expected(spec.prompt, 8, 1000);
  ASSERT_EQ(std::count(zero.begin(), zero.end(), one[2]), 0);
  ASSERT_EQ(std::count(zero.begin(), zero.end(), two[4]), 0);
  ASSERT_EQ(std::count(one.begin(), one.begin() + 2, one[2]), 0);
  ASSERT_EQ(std::count(one.begin(), one.begin() + 3, two[4]), 0);
  ASSERT_EQ(std::count(two.begin(), two.begin() + 5, one[2]), 0);
  spec.stop_token_ids = {one[2]};
  auto sink = std::make_shared<RecordingSink>(two[4]);
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  ASSERT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->choice_tokens[0], zero);
  EXPECT_EQ(sink->choice_reasons.at(0), FinishReason::kLength);
  EXPECT_EQ(sink->choice_tokens[1],
            std::vector<TokenId>(one.begin(), one.begin() + 3));
  EXPECT_EQ(sink->choice_reasons.at(1), FinishReason::kStop);
  const auto two_end = std::find(two.begin(), two.end(), two[4]) + 1;
  EXPECT_EQ(sink->choice_tokens[2], std::vector<TokenId>(two.begin(), two_end));
  EXPECT_EQ(sink->choice_reasons.at(2), FinishReason::kStop);
  // The request's reason is choice 0's.
  EXPECT_EQ(sink->finish.reason, FinishReason::kLength);
  EXPECT_EQ(sink->finish.stats.completion_tokens,
            static_cast<int32_t>(8 + 3 + (two_end - two.begin())));
}

TEST(SchedulerNTest, StopSequenceEndsOneChoiceWithStopAtTheNextStep) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 7; ++i) spec.prompt.push_back(i + 1);
  spec.n = 2;
  spec.max_tokens = 6;
  spec.sink = sink;
  const RequestId id = *scheduler->Submit(spec);
  for (int i = 0; i < 3; ++i) Step(*scheduler, executor);
  ASSERT_EQ(sink->choice_tokens[1].size(), 2u);
  // As a stop string matched off the engine thread does: choice 1 ends at
  // the next step, with kStop, and no further token; choice 0 goes on.
  scheduler->StopSequence(id, 1);
  scheduler->StopSequence(id, 7);       // no such choice: ignored
  scheduler->StopSequence(id + 99, 0);  // no such request: ignored
  Step(*scheduler, executor);
  EXPECT_EQ(sink->choice_reasons.at(1), FinishReason::kStop);
  EXPECT_EQ(sink->choice_tokens[1].size(), 2u);
  EXPECT_EQ(sink->finishes, 0);
  RunToIdle(*scheduler, executor);
  ASSERT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->choice_tokens[0].size(), 6u);
  EXPECT_EQ(sink->choice_reasons.at(0), FinishReason::kLength);
  EXPECT_EQ(sink->finish.stats.completion_tokens, 6 + 2);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
  // A stop for a finished request changes nothing.
  scheduler->StopSequence(id, 0);
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
}

TEST(SchedulerNTest, CancelEndsEverySiblingOnceAndFreesTheirBlocks) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 7; ++i) spec.prompt.push_back(i + 1);
  spec.n = 4;
  spec.max_tokens = 50;
  spec.sink = sink;
  const RequestId id = *scheduler->Submit(spec);
  for (int i = 0; i < 4; ++i) Step(*scheduler, executor);
  EXPECT_EQ(sink->choice_tokens.size(), 4u);
  scheduler->Cancel(id);
  Step(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->finish.reason, FinishReason::kCancelled);
  EXPECT_EQ(sink->finish.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(sink->choice_reasons.empty());
  EXPECT_EQ(sink->finish.stats.completion_tokens, 4 * 3);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
  EXPECT_EQ(scheduler->num_running(), 0);
}

TEST(SchedulerNTest, EngineFailureEndsTheWholeRequestWithError) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 5; ++i) spec.prompt.push_back(i + 1);
  spec.n = 2;
  spec.max_tokens = 20;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  Step(*scheduler, executor);  // prefill
  Step(*scheduler, executor);  // both sample
  executor.FailNextStep();
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->finish.reason, FinishReason::kError);
  EXPECT_EQ(sink->finish.status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
}

TEST(SchedulerNTest, NCountsTowardMaxNumSeqsAndIsRefusedBeyondIt) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 4;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 4);
  RequestSpec spec;
  spec.prompt = {1, 2, 3, 4, 5};
  spec.max_tokens = 3;
  spec.n = 5;
  spec.sink = std::make_shared<RecordingSink>();
  const absl::Status refused = scheduler->Submit(spec).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.message()),
              ::testing::StartsWith("sampling.n:"));
  spec.n = 0;
  EXPECT_EQ(scheduler->Submit(spec).status().code(),
            absl::StatusCode::kInvalidArgument);

  // n = 3 then n = 2: the second waits for slots even before the first
  // forks (the step budget and the pool have room).
  auto first = std::make_shared<RecordingSink>();
  auto second = std::make_shared<RecordingSink>();
  spec.n = 3;
  spec.sink = first;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  spec.n = 2;
  spec.sink = second;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  StepPlan plan = Step(*scheduler, executor);
  EXPECT_EQ(plan.items.size(), 1u);
  EXPECT_EQ(scheduler->num_waiting(), 1);
  while (first->finishes == 0) {
    plan = Step(*scheduler, executor);
    EXPECT_LE(plan.items.size(), 3u) << "the second request ran early";
  }
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(second->choice_tokens.size(), 2u);
}

TEST(SchedulerNTest, PrefixCacheRegistersThePromptOnceAndChoicesBlocks) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  RequestSpec spec;
  for (int i = 0; i < 14; ++i) spec.prompt.push_back(500 + i);
  spec.n = 3;
  spec.max_tokens = 6;
  spec.sampling.seed = 3;
  auto first = std::make_shared<RecordingSink>();
  spec.sink = first;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  // The same prompt again: its three full blocks (12 tokens) are cached.
  auto second = std::make_shared<RecordingSink>();
  spec.sink = second;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(second->finish.stats.cached_prompt_tokens, 12);
  EXPECT_EQ(second->choice_tokens, first->choice_tokens);
  // A choice's own full block (prompt + output) is cached too: an n = 1
  // request continuing choice 2 hits it.
  RequestSpec next;
  next.prompt = spec.prompt;
  next.prompt.insert(next.prompt.end(), first->choice_tokens[2].begin(),
                     first->choice_tokens[2].end());  // 20 tokens
  next.max_tokens = 1;
  auto third = std::make_shared<RecordingSink>();
  next.sink = third;
  ASSERT_TRUE(scheduler->Submit(next).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(third->finish.stats.cached_prompt_tokens, 16);
  EXPECT_TRUE(scheduler->CheckConsistency().ok());
}

TEST(SchedulerNTest, PreemptedSiblingRecomputesAloneAndMatches) {
  // 16 blocks of 4 = one 64-token sequence; three long siblings cannot all
  // fit, so the newest are preempted and recompute their prompt alone.
  Scheduler::Options options = SmallOptions();
  options.num_blocks = 16;
  options.max_model_len = 64;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 16, 32, 8);
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec;
  for (int i = 0; i < 18; ++i) spec.prompt.push_back(700 + i);
  spec.n = 3;
  spec.max_tokens = 40;
  spec.sampling.seed = 11;
  spec.sink = sink;
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  for (int i = 0; i < 10000 && sink->finishes == 0; ++i) {
    Step(*scheduler, executor);
  }
  ASSERT_EQ(sink->finishes, 1);
  EXPECT_GT(scheduler->num_preemptions(), 0);
  for (int32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(sink->choice_tokens[i], Expected(spec.prompt, 40, 11 + i));
  }
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
}

// Thousands of steps of random traffic on tiny and large pools, a quarter of
// the requests with n = 2..4 choices: every request ends exactly once and
// every choice at most once (exactly once unless cancelled) with exactly its
// expected tokens (those of an n = 1 request with its seed), no block leaks,
// reference counts equal block-table references after every step, copies
// only read shared blocks and write the copier's fresh one, budgets hold
// (checked inside SimExecutor), and preemption actually happens.
// Recursive models: num_loops > 1, depth-wise or sequence-wise, and the KV
// fill policy; exits need requests that ask for them.
struct LoopConfig {
  int32_t num_loops = 1;
  bool depthwise = true;
  bool recompute = false;
  bool prompt_exits = false;
};

void RunRandomTraffic(int32_t num_blocks, bool prefix_caching,
                      const LoopConfig& loops) {
  Scheduler::Options options;
  options.num_loops = loops.num_loops;
  options.depthwise = loops.depthwise;
  options.prompt_exits = loops.prompt_exits;
  options.enable_prefix_caching = prefix_caching;
  options.block_size = 4;
  options.num_blocks = num_blocks;
  options.max_model_len = 64;
  options.max_num_seqs = 6;
  options.max_tokens_per_step = 24;
  options.max_waiting_requests = 40;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, num_blocks, 24, 6,
                       SimExecutor::Loops{.num_loops = loops.num_loops,
                                          .recompute = loops.recompute,
                                          .prompt_exits = loops.prompt_exits});
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
      s.spec.n = rng() % 4 == 0 ? 2 + rng() % 3 : 1;
      s.spec.sampling.seed = rng();
      if (rng() % 10 == 0)
        s.spec.stop_token_ids = {static_cast<TokenId>(rng() % kVocab)};
      if (loops.num_loops > 1 && rng() % 3 != 0) {
        s.spec.exit.threshold = 0.5f;  // the simulated engine exits at random
        s.spec.exit.min_loops = 1 + rng() % 2;
      }
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
    const std::vector<int32_t> refs_before = RefCounts(*scheduler);
    StepPlan plan = scheduler->Schedule();
    ReleaseStates(*scheduler, executor);
    CheckCopies(*scheduler, plan, refs_before, options.block_size);
    scheduler->Commit(executor.Execute(plan));
    EXPECT_LE(scheduler->num_blocks_used(), num_blocks);
    const absl::Status consistent = scheduler->CheckConsistency();
    ASSERT_TRUE(consistent.ok()) << "step " << step << ": " << consistent;
  }
  RunToIdle(*scheduler, executor);
  EXPECT_EQ(scheduler->num_blocks_used(), 0);
  EXPECT_TRUE(scheduler->CheckConsistency().ok());
  // Every kept hidden state and pending fill was consumed or released.
  ReleaseStates(*scheduler, executor);
  EXPECT_EQ(executor.kept_states(), 0u);
  if (loops.num_loops > 1) {
    EXPECT_GT(executor.exits(), 100);
    EXPECT_EQ(scheduler->early_exit_tokens() + scheduler->prompt_exit_tokens(),
              executor.exits());
    if (loops.prompt_exits) {
      EXPECT_GT(scheduler->prompt_exit_tokens(), 100);
    } else {
      EXPECT_EQ(scheduler->prompt_exit_tokens(), 0);
    }
  }
  if (prefix_caching) {
    EXPECT_GT(scheduler->prefix_hit_tokens(), 0);
    EXPECT_GT(executor.shared_reads(), 0);
  } else {
    EXPECT_EQ(scheduler->prefix_hit_tokens(), 0);
  }
  int cancelled = 0;
  int forked = 0;
  int forked_cancelled = 0;
  for (const Submitted& s : submitted) {
    ASSERT_EQ(s.sink->finishes, 1);
    const bool was_cancelled =
        s.sink->finish.reason == FinishReason::kCancelled;
    EXPECT_NE(s.sink->finish.reason, FinishReason::kError)
        << s.sink->finish.status;
    if (was_cancelled) {
      EXPECT_TRUE(s.cancel_sent);
      ++cancelled;
    }
    if (s.spec.n > 1) {
      ++forked;
      if (was_cancelled) ++forked_cancelled;
    }
    // Capped by the context: prompt + output <= max_model_len.
    const int32_t cap = std::min<int32_t>(
        s.spec.max_tokens,
        options.max_model_len - static_cast<int32_t>(s.spec.prompt.size()));
    int32_t completion_tokens = 0;
    int32_t longest = 0;
    for (const auto& [index, tokens] : s.sink->choice_tokens) {
      EXPECT_GE(index, 0);
      EXPECT_LT(index, s.spec.n);
      completion_tokens += static_cast<int32_t>(tokens.size());
      longest = std::max(longest, static_cast<int32_t>(tokens.size()));
    }
    EXPECT_EQ(s.sink->finish.stats.completion_tokens, completion_tokens);
    EXPECT_EQ(s.sink->finish.stats.longest_choice_tokens, longest);
    if (!was_cancelled) {
      EXPECT_EQ(static_cast<int32_t>(s.sink->choice_reasons.size()), s.spec.n);
    }
    for (int32_t i = 0; i < s.spec.n; ++i) {
      const auto expected =
          Expected(s.spec.prompt, cap, s.spec.sampling.seed + i);
      const auto it = s.sink->choice_tokens.find(i);
      const std::vector<TokenId> got = it == s.sink->choice_tokens.end()
                                           ? std::vector<TokenId>()
                                           : it->second;
      // Whatever arrived is a prefix of the expected output: never a
      // repeated or missing token, also across preemptions and forks.
      ASSERT_LE(got.size(), expected.size());
      EXPECT_TRUE(std::equal(got.begin(), got.end(), expected.begin()))
          << "request " << s.id << " choice " << i;
      const auto reason = s.sink->choice_reasons.find(i);
      if (reason == s.sink->choice_reasons.end()) {
        EXPECT_TRUE(was_cancelled) << "choice " << i << " never ended";
        continue;
      }
      switch (reason->second) {
        case FinishReason::kLength:
          EXPECT_EQ(got.size(), expected.size());
          break;
        case FinishReason::kStop:
          ASSERT_FALSE(got.empty());
          EXPECT_EQ(got.back(), s.spec.stop_token_ids.at(0));
          break;
        default:
          ADD_FAILURE() << "choice ended with "
                        << FinishReasonName(reason->second);
      }
    }
  }
  // Depth-wise, a token takes num_loops steps: fewer requests get in.
  EXPECT_GT(submitted.size(), loops.num_loops > 1 ? 150u : 300u);
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(forked, loops.num_loops > 1 ? 25 : 50);
  EXPECT_GT(forked_cancelled, 0);
  EXPECT_GT(executor.copies(), 0);
  if (num_blocks <= 24) {
    EXPECT_GT(scheduler->num_preemptions(), 0);
  }
}

class SchedulerSimulationTest
    : public ::testing::TestWithParam<std::tuple<int32_t, bool>> {};

TEST_P(SchedulerSimulationTest, RandomTraffic) {
  const auto [num_blocks, prefix_caching] = GetParam();
  RunRandomTraffic(num_blocks, prefix_caching, LoopConfig{});
}

INSTANTIATE_TEST_SUITE_P(Pools, SchedulerSimulationTest,
                         ::testing::Combine(::testing::Values(16, 24, 64, 1024),
                                            ::testing::Bool()));

// (sequence, loop) items: the same traffic on a 3-loop recursive model.
class SchedulerLoopSimulationTest
    : public ::testing::TestWithParam<std::tuple<int32_t, bool, bool>> {};

TEST_P(SchedulerLoopSimulationTest, RandomTraffic) {
  const auto [num_blocks, depthwise, recompute] = GetParam();
  RunRandomTraffic(
      num_blocks, /*prefix_caching=*/true,
      LoopConfig{
          .num_loops = 3, .depthwise = depthwise, .recompute = recompute});
}

// The same with prompt exits (propagate only): prompt chunks go token by
// token, one loop a step, in both batching modes.
class SchedulerPromptExitSimulationTest
    : public ::testing::TestWithParam<std::tuple<int32_t, bool>> {};

TEST_P(SchedulerPromptExitSimulationTest, RandomTraffic) {
  const auto [num_blocks, depthwise] = GetParam();
  RunRandomTraffic(
      num_blocks, /*prefix_caching=*/true,
      LoopConfig{.num_loops = 3, .depthwise = depthwise, .prompt_exits = true});
}

INSTANTIATE_TEST_SUITE_P(
    Loops, SchedulerPromptExitSimulationTest,
    ::testing::Combine(::testing::Values(16, 64), ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<int32_t, bool>>& info) {
      return absl::StrCat(std::get<0>(info.param), "blocks_",
                          std::get<1>(info.param) ? "depthwise" : "seqwise");
    });

INSTANTIATE_TEST_SUITE_P(
    Loops, SchedulerLoopSimulationTest,
    ::testing::Combine(::testing::Values(16, 64), ::testing::Bool(),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<int32_t, bool, bool>>& info) {
      return absl::StrCat(std::get<0>(info.param), "blocks_",
                          std::get<1>(info.param) ? "depthwise" : "seqwise",
                          "_",
                          std::get<2>(info.param) ? "recompute" : "propagate");
    });

// A 3-loop depth-wise scheduler (SmallOptions) and its simulated engine.
struct ThreeLoops {
  std::unique_ptr<Scheduler> scheduler = [] {
    Scheduler::Options options = SmallOptions();
    options.num_loops = 3;
    return *Scheduler::Create(options);
  }();
  SimExecutor executor{4, 64, 32, 8, SimExecutor::Loops{.num_loops = 3}};
};

// A request for `max_tokens` after `prompt`, reporting to `sink`, full depth.
RequestSpec LoopSpec(std::vector<TokenId> prompt, int32_t max_tokens,
                     std::shared_ptr<RecordingSink> sink) {
  RequestSpec spec;
  spec.prompt = std::move(prompt);
  spec.max_tokens = max_tokens;
  spec.sink = std::move(sink);
  return spec;
}

// Two requests on a 3-loop depth-wise scheduler, B submitted one step after
// A (A has run loop 0 of its prompt), both with `exit_threshold`. With
// `exit_companion`, a third request C, submitted with A, may exit (threshold
// below 1) but never does (min_loops = all loops), and outlasts A and B.
struct StaggeredPair {
  ThreeLoops loops;
  std::unique_ptr<Scheduler>& scheduler = loops.scheduler;
  SimExecutor& executor = loops.executor;
  std::shared_ptr<RecordingSink> a_sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RecordingSink> b_sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RecordingSink> c_sink = std::make_shared<RecordingSink>();
  std::vector<TokenId> a_prompt = {1, 2, 3};
  std::vector<TokenId> b_prompt = {4, 5};
  std::vector<TokenId> c_prompt = {6};
  RequestId a_id = 0, b_id = 0;
  bool companion = false;

  explicit StaggeredPair(float exit_threshold, bool exit_companion = false)
      : companion(exit_companion) {
    RequestSpec a;
    a.prompt = a_prompt;
    a.max_tokens = 12;
    a.exit.threshold = exit_threshold;  // < 1: the simulation exits at random
    a.sink = a_sink;
    RequestSpec b = a;
    b.prompt = b_prompt;
    b.sink = b_sink;
    a_id = *scheduler->Submit(a);
    if (companion) {
      RequestSpec c = a;
      c.prompt = c_prompt;
      c.max_tokens = 40;
      c.exit.threshold = 0.5f;
      c.exit.min_loops = 3;
      c.sink = c_sink;
      EXPECT_TRUE(scheduler->Submit(c).ok());
    }
    scheduler->Commit(executor.Execute(scheduler->Schedule()));
    b_id = *scheduler->Submit(b);
  }
  // Runs to the end, calling on_plan(plan) before each step.
  template <typename F>
  int Run(F on_plan) {
    int steps = 0;
    for (; steps < 300; ++steps) {
      StepPlan plan = scheduler->Schedule();
      ReleaseStates(*scheduler, executor);
      if (plan.items.empty()) break;
      on_plan(plan);
      scheduler->Commit(executor.Execute(plan));
    }
    EXPECT_EQ(a_sink->tokens, Expected(a_prompt, 12));
    EXPECT_EQ(b_sink->tokens, Expected(b_prompt, 12));
    if (companion) {
      EXPECT_EQ(c_sink->tokens, Expected(c_prompt, 40));
    }
    return steps;
  }
};

// Depth-wise with no request that may exit, every step runs whole passes,
// as sequence-wise batching does: one step a token, not num_loops.
TEST(SchedulerLoopTest, FullDepthRunsWholePasses) {
  StaggeredPair pair(/*exit_threshold=*/1.0f);
  int items = 0;
  const int steps = pair.Run([&](const StepPlan& plan) {
    for (const WorkItem& item : plan.items) {
      EXPECT_EQ(item.loop_begin, 0);
      EXPECT_EQ(item.loop_end, -1);
      ++items;
    }
  });
  // A item a token (its first, the prompt's, ran in the constructor), and
  // B's in the same steps as A's.
  EXPECT_EQ(items, 11 + 12);
  EXPECT_EQ(steps, 12);
}

// Beside a request that may exit (so steps run one loop per item), a
// full-depth pass that would start while another is between loops waits (at
// most num_loops - 1 steps) so that the full-depth passes run in phase: from
// then on their items in a step are at one loop, and the LM head runs for
// them in one step out of num_loops instead of for a few rows in each.
TEST(SchedulerLoopTest, FullDepthPassesFallIntoPhase) {
  StaggeredPair pair(/*exit_threshold=*/1.0f, /*exit_companion=*/true);
  int steps_with_both = 0;
  int mixed_steps_after_phase = 0;
  bool in_phase = false;
  pair.Run([&](const StepPlan& plan) {
    const WorkItem* a = nullptr;
    const WorkItem* b = nullptr;
    for (const WorkItem& item : plan.items) {
      if (item.request_id == pair.a_id) a = &item;
      if (item.request_id == pair.b_id) b = &item;
    }
    if (a == nullptr || b == nullptr) return;
    for (const WorkItem& item : plan.items) {
      EXPECT_NE(item.loop_end, -1) << "a whole pass beside one that may exit";
    }
    ++steps_with_both;
    if (a->loop_begin == b->loop_begin) {
      in_phase = true;
    } else if (in_phase) {
      ++mixed_steps_after_phase;
    }
  });
  EXPECT_TRUE(in_phase);
  EXPECT_EQ(mixed_steps_after_phase, 0);
  EXPECT_GT(steps_with_both, 20);
}

// When the last request that may exit ends (here: is cancelled between
// loops), a pass between loops finishes its remaining loops in one step,
// and whole passes follow.
TEST(SchedulerLoopTest, PassesBetweenLoopsFinishWholeWhenExitsEnd) {
  ThreeLoops loops;
  Scheduler* scheduler = loops.scheduler.get();
  SimExecutor& executor = loops.executor;
  auto full_sink = std::make_shared<RecordingSink>();
  const RequestSpec full = LoopSpec({1, 2, 3}, 6, full_sink);
  RequestSpec exits = LoopSpec({4}, 20, std::make_shared<RecordingSink>());
  exits.exit.threshold = 0.5f;
  exits.exit.min_loops = 3;  // may exit, but the simulation never does
  ASSERT_TRUE(scheduler->Submit(full).ok());
  const RequestId exits_id = *scheduler->Submit(exits);
  // Two steps of one loop each: both prompts' passes are between loops.
  for (int step = 0; step < 2; ++step) {
    StepPlan plan = scheduler->Schedule();
    ASSERT_EQ(plan.items.size(), 2u);
    for (const WorkItem& item : plan.items) {
      EXPECT_EQ(item.loop_begin, step);
      EXPECT_EQ(item.loop_end, step + 1);
    }
    scheduler->Commit(executor.Execute(plan));
  }
  scheduler->Cancel(exits_id);
  StepPlan plan = scheduler->Schedule();
  ReleaseStates(*scheduler, executor);
  ASSERT_EQ(plan.items.size(), 1u);
  EXPECT_EQ(plan.items[0].loop_begin, 2);
  EXPECT_EQ(plan.items[0].loop_end, -1);
  scheduler->Commit(executor.Execute(plan));
  int whole_steps = 0;
  for (int step = 0; step < 40; ++step) {
    plan = scheduler->Schedule();
    ReleaseStates(*scheduler, executor);
    if (plan.items.empty()) break;
    for (const WorkItem& item : plan.items) {
      EXPECT_EQ(item.loop_begin, 0);
      EXPECT_EQ(item.loop_end, -1);
    }
    ++whole_steps;
    scheduler->Commit(executor.Execute(plan));
  }
  EXPECT_EQ(whole_steps, 5);  // one a token after the prompt's
  EXPECT_EQ(full_sink->tokens, Expected(full.prompt, 6));
}

// Runs `scheduler` to idle (at most 40 steps), expecting every step to be
// one item that is a whole pass; counts the steps and the items with exits.
struct WholePassRun {
  int steps = 0;
  int with_exit = 0;
};
WholePassRun RunWholePasses(Scheduler& scheduler, SimExecutor& executor) {
  WholePassRun run;
  for (; run.steps < 40; ++run.steps) {
    StepPlan plan = scheduler.Schedule();
    ReleaseStates(scheduler, executor);
    if (plan.items.empty()) break;
    EXPECT_EQ(plan.items.size(), 1u);
    for (const WorkItem& item : plan.items) {
      EXPECT_EQ(item.loop_begin, 0);
      EXPECT_EQ(item.loop_end, -1);
      run.with_exit += item.exit != nullptr;
    }
    scheduler.Commit(executor.Execute(plan));
  }
  return run;
}

// A lone sequence has nobody to share a step with: it runs whole passes,
// its exits included, whatever its exit rule.
TEST(SchedulerLoopTest, LoneSequenceRunsWholePassesWithExits) {
  ThreeLoops loops;
  Scheduler* scheduler = loops.scheduler.get();
  SimExecutor& executor = loops.executor;
  auto sink = std::make_shared<RecordingSink>();
  RequestSpec spec = LoopSpec({1, 2, 3}, 12, sink);
  spec.exit.threshold = 0.5f;  // the simulation exits at random
  ASSERT_TRUE(scheduler->Submit(spec).ok());
  const WholePassRun run = RunWholePasses(*scheduler, executor);
  EXPECT_EQ(run.steps, 12);
  EXPECT_EQ(run.with_exit, 11);  // every decode token, not the prompt
  EXPECT_EQ(sink->tokens, Expected(spec.prompt, 12));
  EXPECT_GT(executor.exits(), 0);
}

// A batch that holds one sequence (max_num_seqs 1) has nobody to share a
// step with either, however many requests wait: whole passes.
TEST(SchedulerLoopTest, OneSequenceBatchRunsWholePasses) {
  Scheduler::Options options = SmallOptions();
  options.num_loops = 3;
  options.max_num_seqs = 1;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 1, SimExecutor::Loops{.num_loops = 3});
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    RequestSpec spec = LoopSpec({static_cast<TokenId>(1 + i)}, 4, sinks[i]);
    spec.exit.threshold = 0.5f;
    ASSERT_TRUE(scheduler->Submit(spec).ok());
  }
  EXPECT_EQ(RunWholePasses(*scheduler, executor).steps, 12);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(sinks[i]->tokens, Expected({static_cast<TokenId>(1 + i)}, 4));
  }
}

// A pass that may exit early never waits for phase: it runs in every step
// from its admission to its end.
TEST(SchedulerLoopTest, PassesThatMayExitDoNotWaitForPhase) {
  StaggeredPair pair(/*exit_threshold=*/0.5f);
  const int steps = pair.Run([&](const StepPlan& plan) {
    const size_t running =
        (pair.a_sink->finishes == 0) + (pair.b_sink->finishes == 0);
    EXPECT_EQ(plan.items.size(), running);
  });
  EXPECT_GT(steps, 12);
}

// ---- Fair admission across tenants (API keys) and per-key limits ----

namespace fair {

RequestSpec TenantSpec(const std::string& tenant, int32_t priority = 0,
                       int32_t max_tokens = 1) {
  RequestSpec spec;
  spec.prompt = {1, 2};
  spec.max_tokens = max_tokens;
  spec.tenant = tenant;
  spec.priority = priority;
  spec.sink = std::make_shared<RecordingSink>();
  return spec;
}

// The request ids of `plan`'s items (one per request when n = 1).
std::vector<RequestId> Ids(const StepPlan& plan) {
  std::vector<RequestId> ids;
  for (const WorkItem& item : plan.items) ids.push_back(item.request_id);
  return ids;
}

// Admits one request per step (max_num_seqs 1, one token each) and returns
// the order they ran in.
std::vector<RequestId> AdmissionOrder(Scheduler& scheduler,
                                      SimExecutor& executor, int count) {
  std::vector<RequestId> order;
  for (int i = 0; i < count; ++i) {
    StepPlan plan = scheduler.Schedule();
    EXPECT_EQ(plan.items.size(), 1u);
    if (plan.items.empty()) break;
    order.push_back(plan.items[0].request_id);
    scheduler.Commit(executor.Execute(plan));
  }
  return order;
}

}  // namespace fair

TEST(SchedulerFairnessTest, AdmissionInterleavesTenants) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 2;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 2);
  // A burst of one tenant queued ahead of another tenant's one request.
  std::vector<RequestId> hog;
  for (int i = 0; i < 4; ++i) {
    hog.push_back(*scheduler->Submit(fair::TenantSpec("hog", 0, 8)));
  }
  const RequestId small = *scheduler->Submit(fair::TenantSpec("small"));
  // Two slots, two tenants: one each, not both to the burst.
  const StepPlan plan = Step(*scheduler, executor);
  EXPECT_THAT(fair::Ids(plan), ::testing::UnorderedElementsAre(hog[0], small));
  RunToIdle(*scheduler, executor);
}

TEST(SchedulerFairnessTest, ATenantWithinItsShareTakesSlotsFromABurst) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 4;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(scheduler->Submit(fair::TenantSpec("hog", 0, 50)).ok());
  }
  Step(*scheduler, executor);
  ASSERT_EQ(scheduler->num_running(), 4);  // the burst holds every slot
  RequestSpec small_spec = fair::TenantSpec("small");
  auto small_sink = std::make_shared<RecordingSink>();
  small_spec.sink = small_sink;
  const RequestId small = *scheduler->Submit(small_spec);
  // The next step: the burst is over its share (4 slots / 2 tenants) and
  // gives one back, so the small request runs now, not after a hog ends.
  const StepPlan plan = Step(*scheduler, executor);
  EXPECT_THAT(fair::Ids(plan), ::testing::Contains(small));
  EXPECT_EQ(scheduler->num_preemptions(), 1);
  EXPECT_EQ(small_sink->finishes, 1);      // its one token, in that step
  EXPECT_EQ(scheduler->num_running(), 3);  // the burst, less the preempted
  RunToIdle(*scheduler, executor);
  EXPECT_TRUE(scheduler->CheckConsistency().ok());
}

TEST(SchedulerFairnessTest, PriorityOrdersOnlyWithinATenant) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 1;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 1);
  const RequestId a_low = *scheduler->Submit(fair::TenantSpec("a", 0));
  const RequestId a_high = *scheduler->Submit(fair::TenantSpec("a", 7));
  // Any client may send a huge priority; it orders only its own requests.
  const RequestId b_max = *scheduler->Submit(
      fair::TenantSpec("b", std::numeric_limits<int32_t>::max()));
  EXPECT_EQ(fair::AdmissionOrder(*scheduler, executor, 3),
            (std::vector<RequestId>{a_high, b_max, a_low}));
}

TEST(SchedulerFairnessTest, AnAdminKeysPriorityCountsAcrossTenants) {
  Scheduler::Options options = SmallOptions();
  options.max_num_seqs = 1;
  auto scheduler = *Scheduler::Create(options);
  SimExecutor executor(4, 64, 32, 1);
  const RequestId a = *scheduler->Submit(fair::TenantSpec("a", 0));
  RequestSpec urgent = fair::TenantSpec("ops", 5);
  urgent.admin = true;
  const RequestId ops = *scheduler->Submit(urgent);
  EXPECT_EQ(fair::AdmissionOrder(*scheduler, executor, 2),
            (std::vector<RequestId>{ops, a}));
}

TEST(SchedulerFairnessTest, PerKeyLimitsNameTheLimit) {
  auto scheduler = *Scheduler::Create(SmallOptions());
  SimExecutor executor(4, 64, 32, 8);
  // Each submission gets a sink of its own.
  auto submit = [&](RequestSpec spec) {
    spec.sink = std::make_shared<RecordingSink>();
    return scheduler->Submit(std::move(spec)).status();
  };
  RequestSpec spec = fair::TenantSpec("team");
  spec.max_concurrency = 2;
  ASSERT_TRUE(submit(spec).ok());
  ASSERT_TRUE(submit(spec).ok());
  const absl::Status third = submit(spec);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(third.message()),
              ::testing::HasSubstr("max_concurrency"));
  // Another key is not held back by this one's limit.
  EXPECT_TRUE(submit(fair::TenantSpec("other")).ok());
  RunToIdle(*scheduler, executor);
  EXPECT_TRUE(submit(spec).ok());  // finished ones free the limit
  RunToIdle(*scheduler, executor);

  RequestSpec tokens = fair::TenantSpec("batch");
  tokens.prompt = {1, 2, 3, 4};
  tokens.max_queued_tokens = 6;
  ASSERT_TRUE(submit(tokens).ok());
  const absl::Status full = submit(tokens);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()),
              ::testing::HasSubstr("max_queued_tokens"));
  // A prompt that alone exceeds the key's limit could never be queued.
  tokens.prompt.assign(7, 1);
  EXPECT_EQ(submit(tokens).code(), absl::StatusCode::kInvalidArgument);
  RunToIdle(*scheduler, executor);
}

TEST(SchedulerTest, APromptOverMaxWaitingTokensIsInvalidNotRetryLater) {
  Scheduler::Options options = SmallOptions();
  options.max_waiting_tokens = 5;
  auto scheduler = *Scheduler::Create(options);
  RequestSpec spec = fair::TenantSpec("");
  spec.prompt.assign(6, 1);
  const absl::Status status = scheduler->Submit(spec).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()),
              ::testing::HasSubstr("--max_waiting_tokens"));
}

}  // namespace
}  // namespace strata
