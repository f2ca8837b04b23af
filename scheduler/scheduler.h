// Iteration-level scheduler: owns every request between Submit() and its
// OnFinish(), decides each engine step's work, and owns the KV block pool's
// bookkeeping (the engine owns the memory).
//
// A request runs as one sequence, or as RequestSpec::n sequences (choices)
// that share its prompt's KV blocks: the prompt but its last token is
// computed once, then the sequence forks and every sibling computes the last
// prompt token itself and samples with its own seed (copy-on-write of the
// shared, partly filled block). See docs/scheduler.md. In a StepPlan a
// sequence's WorkItem::request_id is the request's id for sequence 0 and a
// fresh id (from the same counter) for each sibling, so the engine always
// sees distinct sequences.
//
// Threading contract: Submit(), Cancel(), Drain() and the counters may be
// called from any thread. Schedule() and Commit() are called only by the
// engine thread (EngineLoop), alternately: Schedule, Execute, Commit, ...
#ifndef STRATA_SCHEDULER_SCHEDULER_H_
#define STRATA_SCHEDULER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/step.h"
#include "scheduler/block_manager.h"
#include "scheduler/request.h"

namespace strata {

class Scheduler {
 public:
  struct Options {
    int32_t block_size = 16;
    int32_t num_blocks = 0;              // the engine's KV pool size
    int32_t max_model_len = 2048;        // prompt + output tokens per sequence
    int32_t max_num_seqs = 32;           // running sequences per step
    int32_t max_tokens_per_step = 2048;  // token budget per step
    int32_t max_waiting_requests = 256;  // admission control
    int64_t max_waiting_tokens = 1 << 20;
    bool enable_prefix_caching = true;
    // Static batching admits a new batch only once every running request
    // has finished: the baseline continuous batching is measured against.
    bool static_batching = false;
    // Recursive models (docs/recursive-models.md): the model's num_loops
    // (1 = a plain model) and how a token's loops are batched. Depth-wise:
    // while some request may exit early and more than one sequence runs or
    // waits, every item runs one loop per step, so a step mixes items at
    // different loops and a slot freed by an early exit or a finished
    // sequence is refilled at the next step; a token's hidden state stays in
    // the engine between steps. Otherwise a step runs whole passes.
    // Sequence-wise: an item runs all its loops in one step.
    int32_t num_loops = 1;
    bool depthwise = true;
    // Prompt tokens exit early too (recursive models, requests that may
    // exit; the engine's propagate KV policy only: no fills are planned for
    // them). A prompt chunk then runs one loop per step in either mode, each
    // token its own item with the request's exit rule, except the prompt's
    // last token and the token that samples, which run every loop; the
    // chunk is computed when all its tokens have exited or run every loop.
    // So a token's loops depend on its own hidden state only, never on
    // chunking or batching, and the K/V are those the quality table's
    // teacher-forced perplexity measures (tools/recursive/quality.py).
    // Their blocks are cached under the rule (BlockManager's variant).
    bool prompt_exits = false;
  };

  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(
      const Options& options);
  // Ends every request still held (OnFinish with UNAVAILABLE). Call only
  // after the engine loop has stopped.
  ~Scheduler();

  // Queues a request. Fails at once, without calling the sink, with
  // RESOURCE_EXHAUSTED (queue full, or the tenant's max_concurrency or
  // max_queued_tokens reached; the message names the limit),
  // INVALID_ARGUMENT (prompt too long, n outside [1, max_num_seqs], a prompt
  // that alone exceeds max_waiting_tokens or the tenant's max_queued_tokens
  // and so could never be queued) or UNAVAILABLE (draining). On success the
  // sink's OnFinish will be called exactly once. spec.prompt is moved into
  // the request's sequences.
  absl::StatusOr<RequestId> Submit(RequestSpec spec);

  // Ends a request, all of its sequences, at the next step (FinishReason
  // kCancelled with `status`). Unknown or finished ids are ignored.
  void Cancel(RequestId id, absl::Status status = absl::CancelledError());

  // Ends sequence (choice) `index` of a request at the next step with
  // FinishReason kStop, as if its sink's OnToken had returned false: the
  // path by which a stop string, matched off the engine thread, ends its
  // choice (the siblings go on). Unknown ids, indices and finished
  // sequences are ignored.
  void StopSequence(RequestId id, int32_t index);

  // Engine thread: the next step's plan (empty when there is nothing to do).
  // The spans inside stay valid until Commit().
  StepPlan Schedule();

  // Engine thread: applies a step's result (or its failure) to the requests
  // of the plan returned by the last Schedule().
  void Commit(const absl::StatusOr<StepResult>& result);

  // Blocks until there is work or `timeout` passes. Returns true if there is.
  bool WaitForWork(absl::Duration timeout);

  // Refuse new requests from now on (UNAVAILABLE); running ones continue.
  void StopAccepting();
  // Ends every request with `status` at the next step.
  void CancelAll(absl::Status status);

  // Queued sequences: a request that has not run yet counts once (n
  // included); a preempted sequence counts on its own.
  int32_t num_waiting() const;
  // Requests with at least one sequence in the running batch.
  int32_t num_running() const;
  // Requests accepted (Submit) and not yet finished (their sink's OnFinish
  // has run), waiting or running: the tenants' counts, read under one lock.
  // Unlike num_waiting() + num_running(), which a reader can catch at 0
  // between an admission's two updates, it never reads 0 while a request is
  // in flight: what a drain waits on.
  int32_t num_requests() const;
  int32_t num_blocks_used() const;
  // Engine thread only.
  int64_t num_preemptions() const { return num_preemptions_; }
  int64_t prefix_queried_tokens() const { return prefix_queried_tokens_; }
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }
  // Recursive models: tokens that exited before the last loop, and thus had
  // the K/V of their skipped loops filled (propagated in the same step, or
  // recomputed by kv_fill items). Engine thread only.
  int64_t early_exit_tokens() const { return early_exit_tokens_; }
  // Prompt tokens that exited early (Options::prompt_exits), not counted
  // above.
  int64_t prompt_exit_tokens() const { return prompt_exit_tokens_; }
  // Engine thread: the WorkItem::request_ids whose engine-side state (kept
  // hidden states of a recursive model) must be dropped, because their
  // sequence ended or was preempted since the last call. The engine loop
  // passes them to StepExecutor::ReleaseState before the next Execute.
  std::vector<RequestId> TakeReleasedStates() {
    return std::exchange(released_, {});
  }
  // Engine thread: checks block reference counts against the block tables
  // of every sequence, the free list, the prefix cache, each request's count
  // of live sequences and the sequence limit. For tests.
  absl::Status CheckConsistency() const;
  // Engine thread: a KV block's reference count. For tests.
  int32_t block_ref_count(int32_t block) const {
    return blocks_.ref_count(block);
  }
  const Options& options() const { return options_; }

 private:
  struct Request;
  struct Sequence;
  // A submitted request and its first sequences, on their way to the engine
  // thread.
  struct Arrival {
    std::unique_ptr<Request> request;
    std::vector<std::unique_ptr<Sequence>> sequences;
  };
  explicit Scheduler(const Options& options);

  // A sequence of `request` with choice `index` (seed + index).
  static std::unique_ptr<Sequence> NewSequence(Request& request, int32_t index,
                                               std::vector<TokenId> tokens);
  // Moves submitted requests into the waiting queue and applies cancels.
  void DrainInbox();
  // Marks every sequence of the request to end at the next step (first
  // reason and status win).
  static void EndRequest(Request& request, FinishReason reason,
                         absl::Status status);
  // Frees the sequence's blocks and tells the sink it ended; after the
  // request's last sequence, finishes the request (OnFinish) and forgets it.
  // The caller then drops the sequence.
  void EndSequence(Sequence& seq, FinishReason reason);
  // Ends the sequences of `list` whose request was cancelled, failed or
  // expired, and removes them.
  template <typename List>
  void ReapCancelled(List& list, absl::Time now, bool waiting);
  // StopSequence, on the engine thread: ends that sequence with kStop now.
  void StopSequenceNow(RequestId id, int32_t index);
  // Frees a running sequence's blocks and requeues it at the front.
  void Preempt(std::unique_ptr<Sequence> seq);
  // Sequence 0 of an n > 1 request reached its fork point: its siblings are
  // created sharing its blocks and join the running batch right after it.
  void Fork(Sequence& parent);
  // For a sequence that holds no blocks: takes the cached blocks of its
  // longest cached prefix and counts them as computed. Returns the blocks hit.
  int32_t AcquireCachedPrefix(Sequence& seq);
  // Registers the sequence's newly completed full blocks in the prefix cache.
  void RegisterFullBlocks(Sequence& seq);
  // Whether the sequence's prompt tokens may exit early (prompt_exits).
  bool PromptExits(const Sequence& seq) const;
  // The prefix cache variant its K/V are computed under: 0, or a hash of its
  // exit rule when its prompt tokens may exit.
  uint64_t KvVariant(const Sequence& seq) const;
  // Allocates the blocks `seq` needs to compute `num_tokens` more tokens,
  // copy-on-write of a shared partly filled block included (appended to
  // `copies`). All or nothing: false when the pool is short.
  bool Reserve(Sequence& seq, int32_t num_tokens,
               std::vector<BlockCopy>& copies);
  // Refreshes the counters other threads read.
  void UpdateCounters();
  // Prompt tokens queued for admission went up or down by `delta`: the
  // total and the request's tenant's.
  void AddQueuedTokens(const Request& request, int64_t delta);
  // Fair admission: with several tenants active, a tenant whose next
  // waiting sequence fits in its fair share of the running slots but not in
  // the free slots gets them from the tenant furthest over its share (its
  // newest sequences are preempted). See scheduler.cc, "Fair admission".
  void PreemptForFairness();
  // The waiting sequence to admit next (waiting_.end() when none): see
  // "Fair admission".
  std::deque<std::unique_ptr<Sequence>>::iterator PickWaiting();

  // Per tenant, what Submit checks against the tenant's limits.
  struct TenantCounts {
    int32_t requests = 0;       // submitted and not finished
    int64_t queued_tokens = 0;  // prompt tokens waiting for admission
  };

  const Options options_;

  // Inbox: written by any thread, drained by the engine thread.
  mutable absl::Mutex mu_;
  std::vector<Arrival> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<RequestId, absl::Status>> cancels_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<RequestId, int32_t>> stops_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  absl::Status cancel_all_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, TenantCounts> tenants_ ABSL_GUARDED_BY(mu_);
  std::atomic<RequestId> next_id_{1};
  std::atomic<int32_t> num_waiting_{0};
  std::atomic<int32_t> num_running_{0};
  std::atomic<int64_t> waiting_tokens_{0};
  std::atomic<int32_t> num_blocks_used_{0};

  // Engine-thread state.
  BlockManager blocks_;
  // Every request with a live sequence; sequences point at their request.
  absl::flat_hash_map<RequestId, std::unique_ptr<Request>> requests_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  // Items of the last plan, in order: the sequence, the position of the
  // recompute fill the item runs (-1: the sequence's own tokens), and the
  // position of the one prompt token the item runs when its chunk goes
  // token by token (prompt_exits; -1 otherwise).
  struct Planned {
    Sequence* seq;
    int32_t fill_position;
    int32_t token_position = -1;
  };
  std::vector<Planned> planned_;
  std::vector<RequestId> released_;  // see TakeReleasedStates()
  // UpdateCounters()'s scratch: the requests of the running sequences.
  absl::flat_hash_set<const Request*> running_requests_;
  // Fair admission's round robin: per tenant, the admission serial of its
  // last admitted sequence (lowest goes first).
  absl::flat_hash_map<std::string, uint64_t> last_admitted_;
  uint64_t admission_serial_ = 0;
  int64_t early_exit_tokens_ = 0;
  int64_t prompt_exit_tokens_ = 0;
  int64_t num_preemptions_ = 0;
  int64_t prefix_queried_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
};

}  // namespace strata

#endif  // STRATA_SCHEDULER_SCHEDULER_H_
