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
//
// n > 1 samples of one prompt (vLLM's parallel sampling with a shared
// prompt): the request starts as one sequence whose target is its prompt but
// the last token. When that is computed (Commit), the sequence forks: n - 1
// siblings take a reference to each of its blocks and join the batch, and
// from then on each sibling is an ordinary sequence that computes the last
// prompt token itself and samples its first token with its own seed (seed +
// index). The block holding that last position is shared and, unless the
// position starts a block, partly filled: the first sibling to write into it
// while it is still shared gets a fresh block and the plan carries a copy
// (copy-on-write); the last one writes in place. So the prompt is computed
// once plus n - 1 tokens, the sampler needs no change, and a sibling's tokens
// are exactly those of an n = 1 request with its seed. A one-token prompt has
// nothing to share: its n sequences start apart.
//
// Recursive models (num_loops N > 1): a token is done when it has run all N
// loops or exited early, and only then counts as computed. Depth-wise, an
// item runs one loop per step: the sequence keeps its tokens "in flight"
// (in_flight, loops_done) and the next step sends the same tokens at the next
// loop, the engine carrying their hidden state. Sequence-wise, an item runs
// every loop in one step, as for a plain model. Under the recompute policy a
// token that exited early leaves a fill (its skipped loops) that the
// scheduler sends as a kv_fill item in every step, ahead of or beside the
// sequence's own item, until it reaches the last loop; the fill starts at a
// loop above the one the next token starts at and advances as fast, so
// attention at every loop finds the earlier positions' K/V.
//
// Fair admission: each request belongs to a tenant (its API key's name).
// Waiting sequences are admitted round robin over tenants: each tenant's
// first waiting sequence (its own priority order, FCFS among equals) is a
// candidate, and the tenant admitted least recently goes first; an admin
// tenant's priority, and a preempted sequence's progress, come before that.
// While several tenants are active (running or waiting), each is entitled to
// a fair share of the running slots, max_num_seqs / active tenants: a
// candidate over its share waits while another tenant's candidate is within
// its share, and a tenant within its share whose next sequence does not fit
// in the free slots takes them from the tenant furthest over its share, by
// preempting that tenant's newest sequences (PreemptForFairness). So a burst
// of one tenant can hold every slot only while nobody else asks for one.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <bit>
#include <iterator>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata {

// A request as its client sees it: one sink, one OnFinish, n sequences.
struct Scheduler::Request {
  RequestId id = 0;
  RequestSpec spec;  // spec.prompt is moved into the first sequence
  int32_t num_prompt = 0;
  // Sequences that exist and have not ended (siblings not yet forked are
  // not counted). The request finishes when this reaches 0.
  int32_t num_live = 0;
  // Set by a cancel, the deadline or an engine failure: every sequence ends
  // at the next step with this reason (kCancelled or kError) and status.
  bool ended = false;
  FinishReason end_reason = FinishReason::kCancelled;
  absl::Status end_status;
  std::optional<FinishReason> first_reason;  // sequence 0's, if it ended so
  bool started = false;
  absl::Time first_scheduled;
  bool has_token = false;
  absl::Time first_token;             // of any sequence
  int32_t completion_tokens = 0;      // of ended sequences, summed
  int32_t longest_choice_tokens = 0;  // of ended sequences, the most
  int32_t cached_prompt_tokens = 0;   // at first admission, for usage
};

struct Scheduler::Sequence {
  Request* request = nullptr;  // owned by requests_ (or by its Arrival)
  int32_t index = 0;           // choice index, 0 <= index < n
  // WorkItem::request_id: the request's id for sequence 0, a fresh id from
  // the same counter for each sibling, so that the engine, which may keep
  // per-sequence state by this id, sees distinct sequences.
  RequestId item_id = 0;
  SamplingParams sampling;      // the request's, with seed + index
  std::vector<TokenId> tokens;  // prompt followed by generated tokens
  int32_t num_prompt = 0;
  int32_t num_computed = 0;  // tokens whose K/V is in the cache
  // Sequence 0 of an n > 1 request before its fork: siblings still to come.
  int32_t num_unforked = 0;
  std::vector<int32_t> block_table;
  std::optional<FinishReason> finish;  // set by Commit when it ends
  int32_t step_tokens = 0;             // tokens planned in the current step
  bool step_fills = false;             // its recompute fills are planned too
  // Prefix caching: leading blocks of block_table registered in the cache,
  // and the chain hash of the last of them.
  int32_t num_hashed_blocks = 0;
  uint64_t chain_hash = 0;
  // Recursive models, depth-wise: tokens [num_computed, num_computed +
  // in_flight) have run loops_done loops; the engine keeps their state.
  int32_t in_flight = 0;
  int32_t loops_done = 0;
  // Prompt exits (Options::prompt_exits): the chunk in flight goes token by
  // token; per token of it, whether it is done (exited or ran every loop),
  // and how many are not. Empty when no such chunk is in flight.
  std::vector<bool> chunk_done;
  int32_t chunk_left = 0;
  // Depth-wise, full depth: consecutive steps this sequence's next pass
  // (its loop 0) waited for the running passes to end, so that the passes
  // stay in phase (see Schedule).
  int32_t phase_waits = 0;
  // Recompute policy: positions whose skipped loops are still to run, with
  // the next such loop, oldest (and furthest along) first.
  struct Fill {
    int32_t position;
    int32_t loop;
    // Depth-wise, the first of its loops is a kv_fill item (continuing the
    // exit state); later ones continue the fill's own state like any item.
    bool started = false;
  };
  std::vector<Fill> fills;

  int32_t num_output() const {
    return static_cast<int32_t>(tokens.size()) - num_prompt;
  }
  // Where computing stops before the next event: the end of the tokens (it
  // then samples) or, before the fork, the last prompt token (it then
  // forks; a prompt of n > 1 sequences that fork has at least 2 tokens).
  int32_t target() const {
    return num_unforked > 0 ? num_prompt - 1
                            : static_cast<int32_t>(tokens.size());
  }
  int32_t num_remaining() const { return target() - num_computed; }
  // Running-batch slots it holds: its own and its unforked siblings'.
  int32_t num_slots() const { return 1 + num_unforked; }
  // It ran and was preempted: it goes before new requests at admission.
  bool preempted = false;
};

namespace {

// Whether any of `seqs` (unique_ptrs to sequences) is of a request that may
// exit early.
template <typename Seqs>
bool AnyMayExit(const Seqs& seqs) {
  return std::any_of(seqs.begin(), seqs.end(), [](const auto& seq) {
    return seq->request->spec.exit.Enabled();
  });
}

// Running-batch slots `seqs` hold or will (unforked siblings included).
template <typename Seqs>
int64_t CountSlots(const Seqs& seqs) {
  int64_t slots = 0;
  for (const auto& seq : seqs) slots += seq->num_slots();
  return slots;
}

}  // namespace

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
  if (options.num_loops < 1) {
    return absl::InvalidArgumentError("num_loops must be at least 1");
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
  for (auto& [id, request] : requests_) {
    EndRequest(*request, FinishReason::kCancelled, status);
  }
  for (auto& seq : waiting_) EndSequence(*seq, FinishReason::kCancelled);
  for (auto& seq : running_) EndSequence(*seq, FinishReason::kCancelled);
}

std::unique_ptr<Scheduler::Sequence> Scheduler::NewSequence(
    Request& request, int32_t index, std::vector<TokenId> tokens) {
  auto seq = std::make_unique<Sequence>();
  seq->request = &request;
  seq->index = index;
  seq->sampling = request.spec.sampling;
  seq->sampling.seed += static_cast<uint64_t>(index);  // wraps, by design
  seq->tokens = std::move(tokens);
  seq->num_prompt = request.num_prompt;
  return seq;
}

absl::StatusOr<RequestId> Scheduler::Submit(RequestSpec spec) {
  if (spec.sink == nullptr) return absl::InvalidArgumentError("no sink");
  if (spec.prompt.empty()) return absl::InvalidArgumentError("prompt: empty");
  if (spec.max_tokens < 1) {
    return absl::InvalidArgumentError("sampling.max_tokens: must be >= 1");
  }
  if (spec.n < 1 || spec.n > options_.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.n: ", spec.n,
                     " sequences do not fit this server, which runs ", "1 to ",
                     options_.max_num_seqs, " at once (--max_num_seqs)"));
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

  Arrival arrival;
  arrival.request = std::make_unique<Request>();
  Request& request = *arrival.request;
  request.num_prompt = static_cast<int32_t>(num_prompt);
  request.spec = std::move(spec);
  std::vector<TokenId> prompt = std::move(request.spec.prompt);
  request.spec.prompt.clear();
  const int32_t n = request.spec.n;
  if (n > 1 && num_prompt == 1) {
    // Nothing to share: the sequences start apart.
    for (int32_t i = 0; i < n; ++i) {
      arrival.sequences.push_back(NewSequence(request, i, prompt));
    }
  } else {
    arrival.sequences.push_back(NewSequence(request, 0, std::move(prompt)));
    arrival.sequences[0]->num_unforked = n - 1;
  }
  const int32_t num_sequences = static_cast<int32_t>(arrival.sequences.size());
  request.num_live = num_sequences;
  const int64_t queued_tokens = num_prompt * num_sequences;
  const RequestSpec& submitted = request.spec;
  // A request that alone exceeds a queue limit could never be queued:
  // retrying would not help, so it is the request that is wrong.
  if (queued_tokens > options_.max_waiting_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", queued_tokens,
        " prompt tokens can never be queued on this server (at most ",
        options_.max_waiting_tokens, ", the --max_waiting_tokens limit)"));
  }
  if (submitted.max_queued_tokens > 0 &&
      queued_tokens > submitted.max_queued_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", queued_tokens,
        " prompt tokens can never be queued for API key \"", submitted.tenant,
        "\" (its max_queued_tokens is ", submitted.max_queued_tokens, ")"));
  }

  absl::MutexLock lock(&mu_);
  if (!accepting_) {
    return absl::UnavailableError("the server is shutting down");
  }
  TenantCounts& tenant = tenants_[submitted.tenant];
  if (submitted.max_concurrency > 0 &&
      tenant.requests >= submitted.max_concurrency) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "API key \"", submitted.tenant, "\" has ", tenant.requests,
        " requests queued or running, its max_concurrency limit; retry "
        "later"));
  }
  if (submitted.max_queued_tokens > 0 &&
      tenant.queued_tokens + queued_tokens > submitted.max_queued_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "API key \"", submitted.tenant, "\" has ", tenant.queued_tokens,
        " prompt tokens queued; this request's ", queued_tokens,
        " would pass its max_queued_tokens limit (",
        submitted.max_queued_tokens, "); retry later"));
  }
  if (num_waiting_.load() >= options_.max_waiting_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_waiting_requests,
        " requests, the --max_waiting_requests limit); retry later"));
  }
  if (waiting_tokens_.load() + queued_tokens > options_.max_waiting_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue holds too many prompt tokens (limit ",
                     options_.max_waiting_tokens,
                     ", the --max_waiting_tokens limit); retry later"));
  }
  request.id = next_id_.fetch_add(1);
  const RequestId id = request.id;
  for (auto& seq : arrival.sequences) {
    seq->item_id = seq->index == 0 ? id : next_id_.fetch_add(1);
  }
  num_waiting_.fetch_add(num_sequences);
  waiting_tokens_.fetch_add(queued_tokens);
  ++tenant.requests;
  tenant.queued_tokens += queued_tokens;
  inbox_.push_back(std::move(arrival));
  return id;
}

void Scheduler::Cancel(RequestId id, absl::Status status) {
  absl::MutexLock lock(&mu_);
  cancels_.emplace_back(id, std::move(status));
}

void Scheduler::StopSequence(RequestId id, int32_t index) {
  absl::MutexLock lock(&mu_);
  stops_.emplace_back(id, index);
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
    return !inbox_.empty() || !cancels_.empty() || !stops_.empty() ||
           !cancel_all_.ok();
  };
  return mu_.AwaitWithTimeout(absl::Condition(&has_work), timeout);
}

int32_t Scheduler::num_waiting() const { return num_waiting_.load(); }
int32_t Scheduler::num_running() const { return num_running_.load(); }
int32_t Scheduler::num_requests() const {
  // Each tenant's count rises in Submit and falls after the request's
  // OnFinish, both under mu_.
  absl::MutexLock lock(&mu_);
  int32_t requests = 0;
  for (const auto& [name, counts] : tenants_) requests += counts.requests;
  return requests;
}
int32_t Scheduler::num_blocks_used() const { return num_blocks_used_.load(); }

void Scheduler::DrainInbox() {
  std::vector<Arrival> arrived;
  std::vector<std::pair<RequestId, absl::Status>> cancels;
  std::vector<std::pair<RequestId, int32_t>> stops;
  absl::Status cancel_all;
  {
    absl::MutexLock lock(&mu_);
    arrived.swap(inbox_);
    cancels.swap(cancels_);
    stops.swap(stops_);
    cancel_all = std::exchange(cancel_all_, absl::OkStatus());
  }
  for (Arrival& arrival : arrived) {
    const int32_t priority = arrival.request->spec.priority;
    const RequestId id = arrival.request->id;
    requests_.emplace(id, std::move(arrival.request));
    for (auto& seq : arrival.sequences) {
      // Priority first, FCFS among equals: insert after every waiting
      // sequence of the same or higher priority. Preempted sequences sit at
      // the front.
      auto pos = std::find_if(waiting_.begin(), waiting_.end(),
                              [&](const std::unique_ptr<Sequence>& other) {
                                return other->request->spec.priority < priority;
                              });
      waiting_.insert(pos, std::move(seq));
    }
  }
  if (!cancel_all.ok()) {
    for (auto& [id, request] : requests_) {
      EndRequest(*request, FinishReason::kCancelled, cancel_all);
    }
  }
  for (auto& [id, status] : cancels) {
    const auto it = requests_.find(id);
    if (it != requests_.end()) {
      EndRequest(*it->second, FinishReason::kCancelled, std::move(status));
    }
  }
  for (const auto& [id, index] : stops) StopSequenceNow(id, index);
}

void Scheduler::StopSequenceNow(RequestId id, int32_t index) {
  const auto it = requests_.find(id);
  if (it == requests_.end() || it->second->ended) return;
  auto stop_in = [&](auto& list, bool waiting) {
    for (auto seq = list.begin(); seq != list.end(); ++seq) {
      if ((*seq)->request->id != id || (*seq)->index != index) continue;
      if (waiting) {
        num_waiting_.fetch_sub(1);
        AddQueuedTokens(*(*seq)->request, -(*seq)->num_prompt);
      }
      EndSequence(**seq, FinishReason::kStop);  // may end the request
      list.erase(seq);
      return true;
    }
    return false;
  };
  if (!stop_in(running_, false)) stop_in(waiting_, true);
  UpdateCounters();
}

void Scheduler::EndRequest(Request& request, FinishReason reason,
                           absl::Status status) {
  if (request.ended) return;
  request.ended = true;
  request.end_reason = reason;
  request.end_status = std::move(status);
}

void Scheduler::EndSequence(Sequence& seq, FinishReason reason) {
  blocks_.Free(seq.block_table);
  seq.block_table.clear();
  if (options_.num_loops > 1) released_.push_back(seq.item_id);
  Request& request = *seq.request;
  request.completion_tokens += seq.num_output();
  request.longest_choice_tokens =
      std::max(request.longest_choice_tokens, seq.num_output());
  if (reason == FinishReason::kLength || reason == FinishReason::kStop) {
    if (seq.index == 0) request.first_reason = reason;
    request.spec.sink->OnSequenceFinish(seq.index, reason);
  }
  if (--request.num_live > 0) return;

  const absl::Time now = absl::Now();
  FinishInfo info;
  if (request.ended) {
    info.reason = request.end_reason;
    info.status = request.end_status;
  } else {
    info.reason = request.first_reason.value_or(reason);
  }
  const absl::Time arrival = request.spec.arrival;
  info.stats.prompt_tokens = request.num_prompt;
  info.stats.completion_tokens = request.completion_tokens;
  info.stats.longest_choice_tokens = request.longest_choice_tokens;
  info.stats.cached_prompt_tokens = request.cached_prompt_tokens;
  info.stats.queue_time =
      request.started ? request.first_scheduled - arrival : now - arrival;
  info.stats.time_to_first_token =
      request.has_token ? request.first_token - arrival : absl::ZeroDuration();
  info.stats.latency = now - arrival;
  request.spec.sink->OnFinish(info);
  {
    absl::MutexLock lock(&mu_);
    const auto tenant = tenants_.find(request.spec.tenant);
    if (tenant != tenants_.end() && --tenant->second.requests <= 0 &&
        tenant->second.queued_tokens <= 0) {
      tenants_.erase(tenant);
    }
  }
  requests_.erase(request.id);  // `request` and seq.request dangle now
}

// Ends the sequences of cancelled, failed and expired requests in `list`,
// removing them.
template <typename List>
void Scheduler::ReapCancelled(List& list, absl::Time now, bool waiting) {
  for (auto it = list.begin(); it != list.end();) {
    Sequence& seq = **it;
    Request& request = *seq.request;
    if (!request.ended && now >= request.spec.deadline) {
      EndRequest(request, FinishReason::kCancelled,
                 absl::DeadlineExceededError(
                     "the request's deadline passed before it finished"));
    }
    if (!request.ended) {
      ++it;
      continue;
    }
    if (waiting) {
      num_waiting_.fetch_sub(1);
      AddQueuedTokens(request, -seq.num_prompt);
    }
    EndSequence(seq, request.end_reason);
    it = list.erase(it);
  }
}

void Scheduler::Preempt(std::unique_ptr<Sequence> seq) {
  blocks_.Free(seq->block_table);
  seq->block_table.clear();
  seq->num_computed = 0;
  seq->step_tokens = 0;
  seq->num_hashed_blocks = 0;
  seq->chain_hash = 0;
  seq->in_flight = 0;
  seq->loops_done = 0;
  seq->chunk_done.clear();
  seq->chunk_left = 0;
  seq->fills.clear();
  if (options_.num_loops > 1) released_.push_back(seq->item_id);
  ++num_preemptions_;
  num_waiting_.fetch_add(1);
  AddQueuedTokens(*seq->request, seq->num_prompt);
  seq->preempted = true;
  waiting_.push_front(std::move(seq));
}

void Scheduler::Fork(Sequence& parent) {
  Request& request = *parent.request;
  std::vector<std::unique_ptr<Sequence>> siblings;
  for (int32_t i = 1; i <= parent.num_unforked; ++i) {
    auto sibling = NewSequence(request, parent.index + i, parent.tokens);
    sibling->item_id = next_id_.fetch_add(1);
    sibling->num_computed = parent.num_computed;
    sibling->block_table = parent.block_table;
    blocks_.Fork(sibling->block_table);
    sibling->num_hashed_blocks = parent.num_hashed_blocks;
    sibling->chain_hash = parent.chain_hash;
    siblings.push_back(std::move(sibling));
  }
  request.num_live += parent.num_unforked;
  parent.num_unforked = 0;
  const auto pos = std::find_if(
      running_.begin(), running_.end(),
      [&](const std::unique_ptr<Sequence>& s) { return s.get() == &parent; });
  STRATA_CHECK(pos != running_.end()) << "forking a sequence not running";
  running_.insert(pos + 1, std::make_move_iterator(siblings.begin()),
                  std::make_move_iterator(siblings.end()));
}

int32_t Scheduler::AcquireCachedPrefix(Sequence& seq) {
  if (!seq.block_table.empty()) return 0;
  // At least one token must be computed before the next event (sampling
  // needs logits; a fork needs the parent's last chunk to have run).
  const int32_t max_blocks = (seq.target() - 1) / options_.block_size;
  const int32_t hit = blocks_.AcquireCachedPrefix(
      seq.tokens, max_blocks, seq.block_table, &seq.chain_hash, KvVariant(seq));
  seq.num_computed = hit * options_.block_size;
  seq.num_hashed_blocks = hit;
  return hit;
}

void Scheduler::RegisterFullBlocks(Sequence& seq) {
  const int32_t bs = options_.block_size;
  // A block whose position still waits for its recompute fill lacks the
  // K/V of some loops: another request must not find it in the cache yet.
  const int32_t ready = seq.fills.empty()
                            ? seq.num_computed
                            : std::min(seq.num_computed, seq.fills[0].position);
  while ((seq.num_hashed_blocks + 1) * bs <= ready) {
    const auto tokens =
        std::span<const TokenId>(seq.tokens)
            .subspan(static_cast<size_t>(seq.num_hashed_blocks) * bs, bs);
    seq.chain_hash = blocks_.Register(seq.block_table[seq.num_hashed_blocks],
                                      seq.chain_hash, tokens, KvVariant(seq));
    ++seq.num_hashed_blocks;
  }
}

bool Scheduler::PromptExits(const Sequence& seq) const {
  return options_.prompt_exits && options_.num_loops > 1 &&
         seq.request->spec.exit.Enabled();
}

uint64_t Scheduler::KvVariant(const Sequence& seq) const {
  if (!PromptExits(seq)) return 0;
  const ExitParams& exit = seq.request->spec.exit;
  // What decides a token's loops: the rule's measure, threshold and
  // minimum (forced_exit_loop is a test hook that also decides them).
  uint64_t h = 0x9e3779b97f4a7c15ULL;
  for (const uint64_t part :
       {static_cast<uint64_t>(exit.confidence),
        static_cast<uint64_t>(std::bit_cast<uint32_t>(exit.threshold)),
        static_cast<uint64_t>(exit.min_loops),
        static_cast<uint64_t>(static_cast<uint32_t>(exit.forced_exit_loop))}) {
    h ^= part + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  }
  return h | 1;  // never 0, the exact variant
}

absl::Status Scheduler::CheckConsistency() const {
  std::vector<int32_t> refs(blocks_.num_total(), 0);
  absl::flat_hash_map<const Request*, int32_t> live;
  int32_t slots = 0;
  for (const auto& seq : running_) {
    for (const int32_t b : seq->block_table) ++refs[b];
    ++live[seq->request];
    slots += seq->num_slots();
  }
  for (const auto& seq : waiting_) {
    if (!seq->block_table.empty()) {
      return absl::InternalError(absl::StrCat("waiting request ",
                                              seq->request->id, " sequence ",
                                              seq->index, " holds blocks"));
    }
    ++live[seq->request];
  }
  if (slots > options_.max_num_seqs) {
    return absl::InternalError(absl::StrCat("running sequences hold ", slots,
                                            " slots, more than max_num_seqs ",
                                            options_.max_num_seqs));
  }
  if (live.size() != requests_.size()) {
    return absl::InternalError(absl::StrCat(live.size(),
                                            " requests have sequences but ",
                                            requests_.size(), " are held"));
  }
  for (const auto& [request, count] : live) {
    const auto it = requests_.find(request->id);
    if (it == requests_.end() || it->second.get() != request ||
        request->num_live != count) {
      return absl::InternalError(
          absl::StrCat("request ", request->id, " has ", count,
                       " sequences queued or running but counts ",
                       request->num_live, " live"));
    }
  }
  return blocks_.CheckConsistency(refs);
}

bool Scheduler::Reserve(Sequence& seq, int32_t num_tokens,
                        std::vector<BlockCopy>& copies) {
  const int32_t bs = options_.block_size;
  const int32_t needed =
      std::max(0, BlocksFor(seq.num_computed + num_tokens, bs) -
                      static_cast<int32_t>(seq.block_table.size()));
  // The first new token lands in the table's last block when that block is
  // partly filled; if forked siblings still share it, this sequence needs a
  // copy of its own first. (Blocks before it are full and only read.)
  const size_t first = static_cast<size_t>(seq.num_computed / bs);
  const bool shared = seq.num_computed % bs != 0 &&
                      blocks_.ref_count(seq.block_table[first]) > 1;
  if (needed + (shared ? 1 : 0) > blocks_.num_free()) return false;
  if (shared) {
    std::optional<BlockCopy> copy;
    STRATA_CHECK(blocks_.CopyOnWrite(seq.block_table, first, &copy) &&
                 copy.has_value());
    copies.push_back(*copy);
  }
  if (needed > 0) STRATA_CHECK(blocks_.Allocate(needed, seq.block_table));
  return true;
}

void Scheduler::AddQueuedTokens(const Request& request, int64_t delta) {
  waiting_tokens_.fetch_add(delta);
  absl::MutexLock lock(&mu_);
  tenants_[request.spec.tenant].queued_tokens += delta;
}

std::deque<std::unique_ptr<Scheduler::Sequence>>::iterator
Scheduler::PickWaiting() {
  if (waiting_.empty()) return waiting_.end();
  // Running slots per tenant, and each tenant's first waiting sequence.
  absl::flat_hash_map<std::string_view, int32_t> slots;
  for (const auto& seq : running_) {
    slots[seq->request->spec.tenant] += seq->num_slots();
  }
  absl::flat_hash_map<std::string_view, size_t> first;
  for (size_t i = 0; i < waiting_.size(); ++i) {
    first.try_emplace(waiting_[i]->request->spec.tenant, i);
  }
  absl::flat_hash_set<std::string_view> active;
  for (const auto& [tenant, count] : slots) active.insert(tenant);
  for (const auto& [tenant, index] : first) active.insert(tenant);
  // One tenant: its own order (preempted first, then priority, FCFS).
  if (active.size() == 1) return waiting_.begin();
  const int32_t share = std::max<int32_t>(
      1, options_.max_num_seqs / static_cast<int32_t>(active.size()));
  auto within_share = [&](const Sequence& seq) {
    const auto it = slots.find(seq.request->spec.tenant);
    return (it == slots.end() ? 0 : it->second) + seq.num_slots() <= share;
  };
  bool any_within = false;
  for (const auto& [tenant, index] : first) {
    any_within = any_within || within_share(*waiting_[index]);
  }
  // Order: within its share (when anyone is), preempted, admin priority,
  // the tenant admitted least recently, then the earlier request (not the
  // queue's order, which follows every tenant's priority).
  auto rank = [&](const Sequence& seq) {
    const RequestSpec& spec = seq.request->spec;
    const auto last = last_admitted_.find(spec.tenant);
    return std::make_tuple(
        !any_within || within_share(seq), seq.preempted,
        spec.admin ? spec.priority : 0,
        -static_cast<int64_t>(last == last_admitted_.end() ? 0 : last->second),
        -static_cast<int64_t>(seq.request->id));
  };
  size_t best = first.begin()->second;
  for (const auto& [tenant, index] : first) {
    if (rank(*waiting_[index]) > rank(*waiting_[best])) best = index;
  }
  return waiting_.begin() + static_cast<std::ptrdiff_t>(best);
}

void Scheduler::PreemptForFairness() {
  if (options_.static_batching || waiting_.empty()) return;
  absl::flat_hash_map<std::string_view, int32_t> slots;
  int32_t used = 0;
  for (const auto& seq : running_) {
    slots[seq->request->spec.tenant] += seq->num_slots();
    used += seq->num_slots();
  }
  absl::flat_hash_map<std::string_view, const Sequence*> first;
  for (const auto& seq : waiting_) {
    first.try_emplace(seq->request->spec.tenant, seq.get());
  }
  absl::flat_hash_set<std::string_view> active;
  for (const auto& [tenant, count] : slots) active.insert(tenant);
  for (const auto& [tenant, seq] : first) active.insert(tenant);
  if (active.size() < 2) return;
  const int32_t share = std::max<int32_t>(
      1, options_.max_num_seqs / static_cast<int32_t>(active.size()));
  for (const auto& [tenant, seq] : first) {
    const int32_t held = slots.contains(tenant) ? slots[tenant] : 0;
    const int32_t needed = seq->num_slots();
    if (held + needed > share) continue;  // not entitled to more
    while (options_.max_num_seqs - used < needed) {
      // The tenant furthest over its share gives up its newest sequence.
      std::string_view victim;
      int32_t most_over = 0;
      for (const auto& [other, count] : slots) {
        if (other != tenant && count - share > most_over) {
          victim = other;
          most_over = count - share;
        }
      }
      if (most_over == 0) break;
      const auto it = std::find_if(running_.rbegin(), running_.rend(),
                                   [&](const std::unique_ptr<Sequence>& s) {
                                     return s->request->spec.tenant == victim;
                                   });
      STRATA_CHECK(it != running_.rend())
          << "a tenant's slots without a sequence";
      const int32_t freed = (*it)->num_slots();
      std::unique_ptr<Sequence> preempted = std::move(*it);
      running_.erase(std::next(it).base());
      slots[victim] -= freed;
      used -= freed;
      Preempt(std::move(preempted));
    }
  }
}

void Scheduler::UpdateCounters() {
  absl::flat_hash_set<const Request*>& running = running_requests_;
  running.clear();  // keeps its memory (twice a step)
  for (const auto& seq : running_) running.insert(seq->request);
  num_running_.store(static_cast<int32_t>(running.size()));
  num_blocks_used_.store(blocks_.num_used());
}

StepPlan Scheduler::Schedule() {
  STRATA_CHECK(planned_.empty()) << "Schedule() called twice without Commit()";
  DrainInbox();
  const absl::Time now = absl::Now();
  ReapCancelled(waiting_, now, /*waiting=*/true);
  ReapCancelled(running_, now, /*waiting=*/false);
  PreemptForFairness();

  StepPlan plan;
  int32_t budget = options_.max_tokens_per_step;
  bool preempted = false;
  // Under per-loop steps (see per_loop_steps below), a pass that starts
  // while others are between loops stays out of phase with them for good
  // at full depth: their last loops then fall in different steps, and every
  // step runs the LM head for a few rows, reading all of its weights each time
  // (on the bundled model that made served depth-wise 0.72x sequence-wise at 8
  // clients). So a full-depth pass waits (at most num_loops - 1 steps) until no
  // pass is between loops, and passes start together. A pass that may exit
  // early does not wait: exits end passes at every loop anyway.
  //
  // And depth-wise steps (one loop per item) pay only while some pass may end
  // early and another sequence could take the row it frees: an exit is what
  // frees a row between loops for another's next loop or a new prompt.
  // Otherwise (no running or waiting request may exit, a lone sequence, or
  // a batch that holds one) a step runs whole passes as sequence-wise
  // batching does, exits included (a pass between loops finishes its
  // remaining loops), rather than up to N steps a token, each with its own
  // scheduling, engine set-up and result handling.
  const bool per_loop_steps =
      options_.num_loops > 1 && options_.depthwise &&
      (AnyMayExit(running_) || AnyMayExit(waiting_)) &&
      std::min<int64_t>(CountSlots(running_) + CountSlots(waiting_),
                        options_.max_num_seqs) > 1;
  bool passes_between_loops = false;
  for (const auto& seq : running_) {
    // Only decode passes: a prompt's pass runs the head for one row at its
    // end whatever its phase, and waiting for it would stall every decoder.
    passes_between_loops =
        passes_between_loops ||
        (seq->in_flight > 0 && seq->num_computed >= seq->num_prompt);
  }
  auto waits_for_phase = [&](Sequence& seq) {
    if (!per_loop_steps || !passes_between_loops ||
        seq.request->spec.exit.Enabled() ||
        seq.phase_waits >= options_.num_loops - 1) {
      seq.phase_waits = 0;
      return false;
    }
    ++seq.phase_waits;
    return true;
  };
  // 1. Running sequences, oldest first. When the pool is dry, preempt the
  // newest running sequence (possibly this one) and try again. A sequence
  // reserved earlier in this loop is never the victim, so the copies it
  // asked for stay valid.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& seq = *running_[i];
    // Pending recompute fills (one token each) go first: the sequence's
    // next token may not run without them.
    const int32_t fill = static_cast<int32_t>(seq.fills.size());
    if (seq.in_flight > 0 || fill > budget) {
      // Tokens between loops hold their blocks already; they continue only
      // whole (and with their fills), or wait for the next step.
      const bool fits = seq.in_flight + fill <= budget;
      seq.step_tokens = fits ? seq.in_flight : 0;
      seq.step_fills = fits && fill > 0;
      budget -= fits ? seq.in_flight + fill : 0;
      ++i;
      continue;
    }
    if (fill == 0 && waits_for_phase(seq)) {
      seq.step_tokens = 0;
      seq.step_fills = false;
      ++i;
      continue;
    }
    seq.step_fills = fill > 0;
    const int32_t n = std::min(seq.num_remaining(), budget - fill);
    if (n <= 0 || Reserve(seq, n, plan.block_copies)) {
      seq.step_tokens = std::max(n, 0);
      budget -= seq.step_tokens + fill;
      ++i;
      continue;
    }
    seq.step_fills = false;
    std::unique_ptr<Sequence> victim = std::move(running_.back());
    running_.pop_back();
    const bool self = victim.get() == &seq;
    Preempt(std::move(victim));
    preempted = true;
    if (self) break;
  }
  // 2. Admit waiting sequences into what is left; not in a step that had to
  // preempt, since the pool is known to be short. A sequence that will fork
  // is admitted only with room for all its siblings.
  int64_t slots = CountSlots(running_);
  const bool admit =
      !preempted && (!options_.static_batching || running_.empty());
  while (admit && !waiting_.empty() && budget > 0) {
    const auto next = PickWaiting();
    Sequence& seq = **next;
    if (slots + seq.num_slots() > options_.max_num_seqs) break;
    Request& request = *seq.request;
    const int32_t hit_blocks = AcquireCachedPrefix(seq);
    const int32_t n = std::min(seq.num_remaining(), budget);
    // A waiting sequence holds only full cached blocks: no copy-on-write.
    if (!Reserve(seq, n, plan.block_copies)) {
      // Wait for running sequences to free blocks; give the prefix back.
      blocks_.Free(seq.block_table);
      seq.block_table.clear();
      seq.num_computed = seq.num_hashed_blocks = 0;
      seq.chain_hash = 0;
      break;
    }
    seq.step_tokens = n;
    budget -= n;
    slots += seq.num_slots();
    prefix_queried_tokens_ += static_cast<int64_t>(seq.tokens.size());
    prefix_hit_tokens_ +=
        static_cast<int64_t>(hit_blocks) * options_.block_size;
    if (!request.started) {
      request.started = true;
      request.first_scheduled = now;
      request.cached_prompt_tokens =
          std::min(hit_blocks * options_.block_size, request.num_prompt);
    }
    num_waiting_.fetch_sub(1);
    AddQueuedTokens(request, -seq.num_prompt);
    last_admitted_[request.spec.tenant] = ++admission_serial_;
    running_.push_back(std::move(*next));
    waiting_.erase(next);
  }

  plan.items.reserve(running_.size());
  const bool recursive = options_.num_loops > 1;
  // Loops an item runs this step, past its first: -1 = to the last loop.
  auto loop_end = [&](int32_t loop_begin) {
    return per_loop_steps ? loop_begin + 1 : -1;
  };
  // An item over `count` of the sequence's tokens from `start`.
  auto make_item = [](const Sequence& seq, int32_t start, int32_t count) {
    WorkItem item;
    item.request_id = seq.item_id;
    item.tokens = std::span<const TokenId>(seq.tokens).subspan(start, count);
    item.start_position = start;
    item.block_table = seq.block_table;
    item.sampling = &seq.sampling;
    item.prompt_tokens =
        std::span<const TokenId>(seq.tokens).first(seq.num_prompt);
    item.output_tokens =
        std::span<const TokenId>(seq.tokens).subspan(seq.num_prompt);
    return item;
  };
  for (auto& seq_ptr : running_) {
    Sequence& seq = *seq_ptr;
    for (size_t f = 0; seq.step_fills && f < seq.fills.size(); ++f) {
      const Sequence::Fill& pending = seq.fills[f];
      WorkItem fill = make_item(seq, pending.position, 1);
      fill.loop_begin = pending.loop;
      fill.loop_end = loop_end(pending.loop);
      fill.kv_fill = !pending.started;
      plan.items.push_back(fill);
      planned_.push_back({&seq, pending.position});
    }
    if (seq.step_tokens == 0) continue;
    if (recursive && PromptExits(seq) && seq.num_computed < seq.num_prompt) {
      // Prompt exits: one item per token still running, one loop a step.
      if (seq.chunk_done.empty()) {
        seq.chunk_done.assign(static_cast<size_t>(seq.step_tokens), false);
        seq.chunk_left = seq.step_tokens;
      }
      const int32_t last = static_cast<int32_t>(seq.tokens.size()) - 1;
      for (int32_t k = 0; k < seq.step_tokens; ++k) {
        if (seq.chunk_done[static_cast<size_t>(k)]) continue;
        const int32_t position = seq.num_computed + k;
        WorkItem item = make_item(seq, position, 1);
        item.sample = position == last;
        item.loop_begin = seq.loops_done;
        item.loop_end = seq.loops_done + 1;
        if (position != last && position != seq.num_prompt - 1) {
          item.exit = &seq.request->spec.exit;
        }
        plan.items.push_back(item);
        planned_.push_back({&seq, -1, position});
      }
      continue;
    }
    WorkItem item = make_item(seq, seq.num_computed, seq.step_tokens);
    item.sample = seq.num_computed + seq.step_tokens ==
                  static_cast<int32_t>(seq.tokens.size());
    if (recursive) {
      item.loop_begin = seq.loops_done;
      item.loop_end = loop_end(seq.loops_done);
      const ExitParams& exit = seq.request->spec.exit;
      // The engine applies exits to single decode tokens; prompt tokens
      // always run every loop.
      if (item.sample && seq.step_tokens == 1 &&
          seq.num_computed >= seq.num_prompt && exit.Enabled()) {
        item.exit = &exit;
      }
    }
    plan.items.push_back(item);
    planned_.push_back({&seq, -1});
  }
  UpdateCounters();
  return plan;
}

void Scheduler::Commit(const absl::StatusOr<StepResult>& result) {
  const absl::Time now = absl::Now();
  if (result.ok()) {
    STRATA_CHECK(result->items.size() == planned_.size())
        << "StepResult does not match the plan";
  }
  const bool recursive = options_.num_loops > 1;
  for (size_t i = 0; i < planned_.size(); ++i) {
    Sequence& seq = *planned_[i].seq;
    Request& request = *seq.request;
    if (!result.ok()) {
      // The whole request fails: its other sequences end at the next step.
      seq.step_tokens = 0;
      seq.step_fills = false;
      EndRequest(request, FinishReason::kError, result.status());
      seq.finish = FinishReason::kError;
      continue;
    }
    const ItemResult& done = result->items[i];
    if (planned_[i].fill_position >= 0) {
      seq.step_fills = false;
      const auto fill = std::find_if(
          seq.fills.begin(), seq.fills.end(), [&](const Sequence::Fill& f) {
            return f.position == planned_[i].fill_position;
          });
      STRATA_CHECK(fill != seq.fills.end()) << "a fill that was not pending";
      if (done.exit_loop >= 0) {
        seq.fills.erase(fill);  // every skipped loop has run
        RegisterFullBlocks(seq);
      } else {
        fill->loop = done.loops_done;
        fill->started = true;
      }
      continue;
    }
    const bool by_token = planned_[i].token_position >= 0;
    if (by_token) {
      // One token of a prompt chunk that goes token by token: every item
      // ran the same loop, so all give the same loops_done.
      seq.step_tokens = 0;
      seq.in_flight = static_cast<int32_t>(seq.chunk_done.size());
      seq.loops_done = done.loops_done;
      if (done.exit_loop >= 0) {
        seq.chunk_done[static_cast<size_t>(planned_[i].token_position -
                                           seq.num_computed)] = true;
        --seq.chunk_left;
        if (done.exit_loop < options_.num_loops - 1) ++prompt_exit_tokens_;
      }
      if (seq.chunk_left > 0) continue;
      // The chunk's last token to finish: the chunk is computed. The token
      // that samples runs every loop, so it finishes last, in this item.
    }
    const int32_t tokens =
        by_token
            ? static_cast<int32_t>(std::exchange(seq.chunk_done, {}).size())
            : std::exchange(seq.step_tokens, 0);
    if (recursive && done.exit_loop < 0) {
      // Between loops: the engine keeps the state; same tokens next step.
      seq.in_flight = tokens;
      seq.loops_done = done.loops_done;
      continue;
    }
    seq.in_flight = 0;
    seq.loops_done = 0;
    seq.num_computed += tokens;
    if (recursive && !by_token && done.exit_loop < options_.num_loops - 1) {
      ++early_exit_tokens_;
      if (done.needs_kv_fill) {
        seq.fills.push_back({seq.num_computed - 1, done.exit_loop + 1});
      }
    }
    RegisterFullBlocks(seq);
    if (seq.num_unforked > 0 && seq.num_computed == seq.target()) {
      Fork(seq);
      continue;
    }
    if (!done.sampled.has_value()) continue;
    const TokenId token = done.sampled->token;
    seq.tokens.push_back(token);
    if (!request.has_token) {
      request.has_token = true;
      request.first_token = now;
    }
    TokenEvent event;
    event.sampled = *done.sampled;
    event.index = seq.index;
    event.loops = recursive ? done.exit_loop + 1 : 1;
    const auto& stops = request.spec.stop_token_ids;
    event.is_stop_token =
        std::find(stops.begin(), stops.end(), token) != stops.end();
    const bool at_limit =
        seq.num_output() >= request.spec.max_tokens ||
        static_cast<int32_t>(seq.tokens.size()) >= options_.max_model_len;
    event.ends_sequence = event.is_stop_token || at_limit;
    const bool keep_going = request.spec.sink->OnToken(event);
    if (event.is_stop_token || !keep_going) {
      seq.finish = FinishReason::kStop;
    } else if (at_limit) {
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
    EndSequence(seq, *seq.finish);
    it = running_.erase(it);
  }
  UpdateCounters();
}

}  // namespace strata
