// Design note: the scheduler follows one rule, taken from vLLM v1: every
// sequence has `num_computed` tokens whose K/V is in the cache and a list of
// `tokens` (prompt, then generated) it wants computed. Each step gives each
// running sequence min(remaining, budget) tokens, then admits waiting ones
// into what is left of the token budget. There is no prefill or decode phase:
// a long prompt is simply computed over several steps (chunked prefill) while
// running sequences keep decoding, and a preempted sequence (blocks freed,
// num_computed reset to 0, requeued at the front) recomputes its prompt and
// its generated tokens the same way before it samples again, so its client
// sees neither repeated nor missing tokens.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata {

struct Scheduler::Sequence {
  RequestId id = 0;
  RequestSpec spec;
  std::vector<TokenId> tokens;  // prompt followed by generated tokens
  int32_t num_prompt = 0;
  int32_t num_computed = 0;  // tokens whose K/V is in the cache
  std::vector<int32_t> block_table;
  absl::Status cancel_status;  // set when a cancel or the deadline arrived
  bool cancelled = false;
  std::optional<FinishReason> finish;  // set by Commit when the request ends
  absl::Status finish_status;
  bool started = false;
  absl::Time first_scheduled;
  absl::Time first_token;
  int32_t step_tokens = 0;  // tokens planned in the current step
  // Prefix caching: leading blocks of block_table registered in the cache,
  // and the chain hash of the last of them.
  int32_t num_hashed_blocks = 0;
  uint64_t chain_hash = 0;
  int32_t cached_prompt_tokens = 0;  // at first admission, for usage

  int32_t num_output() const {
    return static_cast<int32_t>(tokens.size()) - num_prompt;
  }
  int32_t num_remaining() const {
    return static_cast<int32_t>(tokens.size()) - num_computed;
  }
};

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(
    const Options& options) {
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError("block_size must be positive");
  }
  if (options.max_model_len < 2) {
    return absl::InvalidArgumentError("max_model_len must be at least 2");
  }
  if (options.max_num_seqs <= 0 || options.max_tokens_per_step <= 0) {
    return absl::InvalidArgumentError(
        "max_num_seqs and max_tokens_per_step must be positive");
  }
  // A lone sequence must always fit, or preemption could never make room.
  const int64_t capacity =
      static_cast<int64_t>(options.num_blocks) * options.block_size;
  if (capacity < options.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV cache holds ", capacity, " tokens (", options.num_blocks,
        " blocks of ", options.block_size,
        "), less than one sequence of max_model_len ", options.max_model_len,
        ": raise the KV cache size or lower max_model_len"));
  }
  return std::unique_ptr<Scheduler>(new Scheduler(options));
}

Scheduler::Scheduler(const Options& options)
    : options_(options),
      blocks_(options.num_blocks, options.block_size,
              options.enable_prefix_caching) {}

Scheduler::~Scheduler() {
  // Every submitted request hears OnFinish exactly once, even at shutdown.
  const absl::Status status =
      absl::UnavailableError("the server shut down before the request ended");
  DrainInbox();
  for (auto& seq : waiting_) Finish(*seq, FinishReason::kCancelled, status);
  for (auto& seq : running_) Finish(*seq, FinishReason::kCancelled, status);
}

absl::StatusOr<RequestId> Scheduler::Submit(RequestSpec spec) {
  if (spec.sink == nullptr) return absl::InvalidArgumentError("no sink");
  if (spec.prompt.empty()) return absl::InvalidArgumentError("prompt: empty");
  if (spec.max_tokens < 1) {
    return absl::InvalidArgumentError("sampling.max_tokens: must be >= 1");
  }
  const int64_t num_prompt = static_cast<int64_t>(spec.prompt.size());
  if (num_prompt >= options_.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt: ", num_prompt,
                     " tokens leave no room to generate within the context "
                     "length ",
                     options_.max_model_len));
  }
  if (spec.arrival == absl::InfinitePast()) spec.arrival = absl::Now();

  auto seq = std::make_unique<Sequence>();
  seq->tokens = spec.prompt;
  seq->num_prompt = static_cast<int32_t>(num_prompt);
  seq->spec = std::move(spec);

  absl::MutexLock lock(&mu_);
  if (!accepting_) {
    return absl::UnavailableError("the server is shutting down");
  }
  if (num_waiting_.load() >= options_.max_waiting_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_waiting_requests,
        " requests, the --max_waiting_requests limit); retry later"));
  }
  if (waiting_tokens_.load() + num_prompt > options_.max_waiting_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue holds too many prompt tokens (limit ",
                     options_.max_waiting_tokens,
                     ", the --max_waiting_tokens limit); retry later"));
  }
  seq->id = next_id_.fetch_add(1);
  const RequestId id = seq->id;
  num_waiting_.fetch_add(1);
  waiting_tokens_.fetch_add(num_prompt);
  inbox_.push_back(std::move(seq));
  return id;
}

void Scheduler::Cancel(RequestId id, absl::Status status) {
  absl::MutexLock lock(&mu_);
  cancels_.emplace_back(id, std::move(status));
}

void Scheduler::StopAccepting() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
}

void Scheduler::CancelAll(absl::Status status) {
  absl::MutexLock lock(&mu_);
  cancel_all_ = std::move(status);
}

bool Scheduler::WaitForWork(absl::Duration timeout) {
  if (!waiting_.empty() || !running_.empty()) return true;
  absl::MutexLock lock(&mu_);
  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !inbox_.empty() || !cancels_.empty() || !cancel_all_.ok();
  };
  return mu_.AwaitWithTimeout(absl::Condition(&has_work), timeout);
}

int32_t Scheduler::num_waiting() const { return num_waiting_.load(); }
int32_t Scheduler::num_running() const { return num_running_.load(); }
int32_t Scheduler::num_blocks_used() const { return num_blocks_used_.load(); }

void Scheduler::DrainInbox() {
  std::vector<std::unique_ptr<Sequence>> arrived;
  std::vector<std::pair<RequestId, absl::Status>> cancels;
  absl::Status cancel_all;
  {
    absl::MutexLock lock(&mu_);
    arrived.swap(inbox_);
    cancels.swap(cancels_);
    cancel_all = std::exchange(cancel_all_, absl::OkStatus());
  }
  for (auto& seq : arrived) {
    // Priority first, FCFS among equals: insert after every waiting request
    // of the same or higher priority. Preempted sequences sit at the front.
    auto pos = std::find_if(waiting_.begin(), waiting_.end(),
                            [&](const std::unique_ptr<Sequence>& other) {
                              return other->spec.priority < seq->spec.priority;
                            });
    waiting_.insert(pos, std::move(seq));
  }
  if (cancels.empty() && cancel_all.ok()) return;
  auto mark = [&](Sequence& seq) {
    if (!cancel_all.ok()) {
      seq.cancelled = true;
      seq.cancel_status = cancel_all;
      return;
    }
    for (const auto& [id, status] : cancels) {
      if (id == seq.id && !seq.cancelled) {
        seq.cancelled = true;
        seq.cancel_status = status;
      }
    }
  };
  for (auto& seq : waiting_) mark(*seq);
  for (auto& seq : running_) mark(*seq);
}

void Scheduler::Finish(Sequence& seq, FinishReason reason,
                       absl::Status status) {
  blocks_.Free(seq.block_table);
  seq.block_table.clear();
  const absl::Time now = absl::Now();
  FinishInfo info;
  info.reason = reason;
  info.status = std::move(status);
  info.stats.prompt_tokens = seq.num_prompt;
  info.stats.completion_tokens = seq.num_output();
  info.stats.cached_prompt_tokens = seq.cached_prompt_tokens;
  info.stats.queue_time = seq.started ? seq.first_scheduled - seq.spec.arrival
                                      : now - seq.spec.arrival;
  info.stats.time_to_first_token = seq.num_output() > 0
                                       ? seq.first_token - seq.spec.arrival
                                       : absl::ZeroDuration();
  info.stats.latency = now - seq.spec.arrival;
  seq.spec.sink->OnFinish(info);
}

// Ends cancelled and expired sequences of `list`, removing them.
template <typename List>
void Scheduler::ReapCancelled(List& list, absl::Time now, bool waiting) {
  for (auto it = list.begin(); it != list.end();) {
    Sequence& seq = **it;
    if (!seq.cancelled && now >= seq.spec.deadline) {
      seq.cancelled = true;
      seq.cancel_status = absl::DeadlineExceededError(
          "the request's deadline passed before it finished");
    }
    if (seq.cancelled) {
      if (waiting) {
        num_waiting_.fetch_sub(1);
        waiting_tokens_.fetch_sub(seq.num_prompt);
      }
      Finish(seq, FinishReason::kCancelled, seq.cancel_status);
      it = list.erase(it);
    } else {
      ++it;
    }
  }
}

void Scheduler::Preempt(std::unique_ptr<Sequence> seq) {
  blocks_.Free(seq->block_table);
  seq->block_table.clear();
  seq->num_computed = 0;
  seq->step_tokens = 0;
  seq->num_hashed_blocks = 0;
  seq->chain_hash = 0;
  ++num_preemptions_;
  num_waiting_.fetch_add(1);
  waiting_tokens_.fetch_add(seq->num_prompt);
  waiting_.push_front(std::move(seq));
}

int32_t Scheduler::AcquireCachedPrefix(Sequence& seq) {
  if (!seq.block_table.empty()) return 0;
  // At least one token must be computed to produce logits.
  const int32_t max_blocks =
      (static_cast<int32_t>(seq.tokens.size()) - 1) / options_.block_size;
  const int32_t hit = blocks_.AcquireCachedPrefix(
      seq.tokens, max_blocks, seq.block_table, &seq.chain_hash);
  seq.num_computed = hit * options_.block_size;
  seq.num_hashed_blocks = hit;
  return hit;
}

void Scheduler::RegisterFullBlocks(Sequence& seq) {
  const int32_t bs = options_.block_size;
  while ((seq.num_hashed_blocks + 1) * bs <= seq.num_computed) {
    const auto tokens =
        std::span<const TokenId>(seq.tokens)
            .subspan(static_cast<size_t>(seq.num_hashed_blocks) * bs, bs);
    seq.chain_hash = blocks_.Register(seq.block_table[seq.num_hashed_blocks],
                                      seq.chain_hash, tokens);
    ++seq.num_hashed_blocks;
  }
}

absl::Status Scheduler::CheckConsistency() const {
  std::vector<int32_t> refs(blocks_.num_total(), 0);
  for (const auto& seq : running_) {
    for (const int32_t b : seq->block_table) ++refs[b];
  }
  for (const auto& seq : waiting_) {
    if (!seq->block_table.empty()) {
      return absl::InternalError(
          absl::StrCat("waiting request ", seq->id, " holds blocks"));
    }
  }
  return blocks_.CheckConsistency(refs);
}

bool Scheduler::Reserve(Sequence& seq, int32_t num_tokens) {
  const int32_t needed =
      BlocksFor(seq.num_computed + num_tokens, options_.block_size) -
      static_cast<int32_t>(seq.block_table.size());
  return needed <= 0 || blocks_.Allocate(needed, seq.block_table);
}

StepPlan Scheduler::Schedule() {
  STRATA_CHECK(planned_.empty()) << "Schedule() called twice without Commit()";
  DrainInbox();
  const absl::Time now = absl::Now();
  ReapCancelled(waiting_, now, /*waiting=*/true);
  ReapCancelled(running_, now, /*waiting=*/false);

  int32_t budget = options_.max_tokens_per_step;
  bool preempted = false;
  // 1. Running sequences, oldest first. When the pool is dry, preempt the
  // newest running sequence (possibly this one) and try again.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& seq = *running_[i];
    const int32_t n = std::min(seq.num_remaining(), budget);
    if (Reserve(seq, n)) {
      seq.step_tokens = n;
      budget -= n;
      ++i;
      continue;
    }
    std::unique_ptr<Sequence> victim = std::move(running_.back());
    running_.pop_back();
    const bool self = victim.get() == &seq;
    Preempt(std::move(victim));
    preempted = true;
    if (self) break;
  }
  // 2. Admit waiting sequences into what is left; not in a step that had to
  // preempt, since the pool is known to be short.
  const bool admit =
      !preempted && (!options_.static_batching || running_.empty());
  while (admit && !waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence& seq = *waiting_.front();
    const int32_t hit_blocks = AcquireCachedPrefix(seq);
    const int32_t n = std::min(seq.num_remaining(), budget);
    if (!Reserve(seq, n)) {
      // Wait for running sequences to free blocks; give the prefix back.
      blocks_.Free(seq.block_table);
      seq.block_table.clear();
      seq.num_computed = seq.num_hashed_blocks = 0;
      seq.chain_hash = 0;
      break;
    }
    seq.step_tokens = n;
    budget -= n;
    prefix_queried_tokens_ += static_cast<int64_t>(seq.tokens.size());
    prefix_hit_tokens_ +=
        static_cast<int64_t>(hit_blocks) * options_.block_size;
    if (!seq.started) {
      seq.started = true;
      seq.first_scheduled = now;
      seq.cached_prompt_tokens =
          std::min(hit_blocks * options_.block_size, seq.num_prompt);
    }
    num_waiting_.fetch_sub(1);
    waiting_tokens_.fetch_sub(seq.num_prompt);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }

  StepPlan plan;
  plan.items.reserve(running_.size());
  for (auto& seq_ptr : running_) {
    Sequence& seq = *seq_ptr;
    if (seq.step_tokens == 0) continue;
    WorkItem item;
    item.request_id = seq.id;
    item.tokens = std::span<const TokenId>(seq.tokens)
                      .subspan(seq.num_computed, seq.step_tokens);
    item.start_position = seq.num_computed;
    item.block_table = seq.block_table;
    item.sample = seq.num_computed + seq.step_tokens ==
                  static_cast<int32_t>(seq.tokens.size());
    item.sampling = &seq.spec.sampling;
    item.prompt_tokens =
        std::span<const TokenId>(seq.tokens).first(seq.num_prompt);
    item.output_tokens =
        std::span<const TokenId>(seq.tokens).subspan(seq.num_prompt);
    plan.items.push_back(item);
    planned_.push_back(&seq);
  }
  num_running_.store(static_cast<int32_t>(running_.size()));
  num_blocks_used_.store(blocks_.num_used());
  return plan;
}

void Scheduler::Commit(const absl::StatusOr<StepResult>& result) {
  const absl::Time now = absl::Now();
  if (result.ok()) {
    STRATA_CHECK(result->items.size() == planned_.size())
        << "StepResult does not match the plan";
  }
  for (size_t i = 0; i < planned_.size(); ++i) {
    Sequence& seq = *planned_[i];
    seq.num_computed += std::exchange(seq.step_tokens, 0);
    if (result.ok()) RegisterFullBlocks(seq);
    if (!result.ok()) {
      seq.finish = FinishReason::kError;
      seq.finish_status = result.status();
      continue;
    }
    const ItemResult& item = result->items[i];
    if (!item.sampled.has_value()) continue;
    const TokenId token = item.sampled->token;
    seq.tokens.push_back(token);
    if (seq.num_output() == 1) seq.first_token = now;
    TokenEvent event;
    event.sampled = *item.sampled;
    const auto& stops = seq.spec.stop_token_ids;
    event.is_stop_token =
        std::find(stops.begin(), stops.end(), token) != stops.end();
    const bool keep_going = seq.spec.sink->OnToken(event);
    if (event.is_stop_token || !keep_going) {
      seq.finish = FinishReason::kStop;
    } else if (seq.num_output() >= seq.spec.max_tokens ||
               static_cast<int32_t>(seq.tokens.size()) >=
                   options_.max_model_len) {
      seq.finish = FinishReason::kLength;
    }
  }
  planned_.clear();
  // Retire finished and failed sequences.
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& seq = **it;
    if (!seq.finish.has_value()) {
      ++it;
      continue;
    }
    Finish(seq, *seq.finish, seq.finish_status);
    it = running_.erase(it);
  }
  num_running_.store(static_cast<int32_t>(running_.size()));
  num_blocks_used_.store(blocks_.num_used());
}

}  // namespace strata
