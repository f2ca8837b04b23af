// The step interface between scheduler/ and engine/ (see DESIGN.md).
//
// Each engine step the scheduler hands the engine a StepPlan: one WorkItem per
// sequence that runs this step. The engine runs the forward pass over all
// items as one batch, writes their K/V into the paged cache through each
// item's block table, samples where asked, and returns a StepResult with one
// ItemResult per WorkItem, in the same order.
//
// Threading: both the plan and the executor are used from the single engine
// thread. Spans in a WorkItem borrow memory owned by the scheduler and are
// valid only for the duration of Execute().
#ifndef STRATA_ENGINE_STEP_H_
#define STRATA_ENGINE_STEP_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "common/token_id.h"
#include "engine/exit_policy.h"

namespace strata {

using RequestId = uint64_t;

// How to pick the next token from the logits. Validated by server/ before a
// request is queued; the engine may assume the ranges documented in the proto.
struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax, lowest id wins ties)
  int32_t top_k = 0;                // 0 = disabled
  float top_p = 1.0f;               // 1 = disabled
  float min_p = 0.0f;               // 0 = disabled
  float repetition_penalty = 1.0f;  // over prompt and output tokens
  float presence_penalty = 0.0f;    // over output tokens
  float frequency_penalty = 0.0f;   // over output tokens
  uint64_t seed = 0;             // with the sample index, fixes the random draw
  int32_t num_top_logprobs = 0;  // alternatives to return; 0 = none

  std::string DebugString() const;
};

// One sequence's slice of work this step: a prompt chunk or one decode token.
struct WorkItem {
  RequestId request_id = 0;
  // New tokens to run. [num_new_tokens]
  std::span<const TokenId> tokens;
  // Position of tokens[0]; the item covers positions [start_position,
  // start_position + tokens.size()). K/V for [0, start_position) is already in
  // the cache.
  int32_t start_position = 0;
  // Physical KV block ids covering positions [0, start_position +
  // tokens.size()); block i holds positions [i*block_size, (i+1)*block_size).
  std::span<const int32_t> block_table;
  // Sample a token after the last new token (the last prompt chunk, or a
  // decode token).
  bool sample = false;
  // Only read when sample is true.
  const SamplingParams* sampling = nullptr;
  // For penalties: the prompt tokens and the tokens generated so far.
  std::span<const TokenId> prompt_tokens;
  std::span<const TokenId> output_tokens;

  // ---- Recursive models (num_loops N > 1; docs/engine.md, "Recursive
  // forward"). The defaults run every loop, as for a plain model (N = 1). ----
  //
  // The item's tokens run loops [loop_begin, loop_end) this step, after
  // which their hidden state is kept by the engine (keyed by request_id and
  // start_position) unless they finished: reached loop N-1 or exited early.
  // Input: the embeddings when loop_begin == 0, otherwise the state an
  // earlier step of this request kept for exactly these positions with
  // loop_begin loops done (INVALID_ARGUMENT if there is none).
  int32_t loop_begin = 0;  // in [0, N)
  int32_t loop_end = -1;   // one past the last loop; -1 = N
  // Early exit (items of one token only; null = full depth). At each
  // boundary l in [loop_begin, loop_end) with l < N-1 the exit rule is
  // applied; on exit a sample item's token is sampled from loop l's logits,
  // later loops are skipped and their K/V filled per the runner's
  // KvFillPolicy. Without sample (a prompt token) the token just stops:
  // nothing is sampled and no logits row is made. An item that may exit
  // must not be followed in the step by an item of its request that runs a
  // loop past this one's loop_begin (the propagated K/V are written after
  // the step).
  const ExitParams* exit = nullptr;
  // Recompute policy: this item runs the loops an early exit skipped
  // (loop_begin = exit_loop + 1, the same single token and position, and
  // sample = false, exit = null), continuing from the kept exit state and
  // writing exact K/V; nothing is sampled. Must precede (or share the step
  // with) the next token of the request reaching loop_begin.
  bool kv_fill = false;

  std::string DebugString() const;
};

// A copy of one KV block into another (vLLM's blocks_to_copy): copy-on-write
// for sequences that share a partly filled block. When the siblings of an
// n > 1 request share their prompt's last, partly filled block and one of
// them is about to write into it, the scheduler gives that sibling a freshly
// allocated block `dst` and asks the engine to copy every layer's K and V of
// `src` into it before the step's forward pass.
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
};

struct StepPlan {
  std::vector<WorkItem> items;
  // Run in this order, each one complete before the next, and all of them
  // before the forward pass. src != dst; both are KV block ids.
  // [num_copies]
  std::vector<BlockCopy> block_copies;

  int32_t NumTokens() const;
  std::string DebugString() const;
};

struct SampledToken {
  TokenId token = 0;
  // Log-probability of the token under the model's raw distribution
  // (log-softmax of the logits before sampling transforms).
  float logprob = 0.0f;
  // The num_top_logprobs most likely tokens, most likely first.
  std::vector<std::pair<TokenId, float>> top_logprobs;
};

struct ItemResult {
  RequestId request_id = 0;
  // Set iff the item asked to sample and its tokens finished this step
  // (always, for a plain model or loop_end = N; for a recursive item that
  // stops at loop_end < N without exiting, not).
  std::optional<SampledToken> sampled;

  // ---- Recursive models (plain models: loops_done 1, exit_loop 0). ----
  // Loops the item's tokens have completed after this step (absolute, so
  // N = all; exit_loop + 1 after an early exit). The next step of these
  // positions, if any, has loop_begin = loops_done.
  int32_t loops_done = 0;
  // The loop after which the tokens stopped for good: < N-1 for an early
  // exit, N-1 at full depth; -1 while loops remain (state kept). When
  // `sampled` is set, the token was sampled from this loop's logits.
  int32_t exit_loop = -1;
  // Confidence at the last boundary where the exit rule was evaluated this
  // step (the exit's own when it exited early); unset if none was.
  std::optional<float> exit_confidence;
  // Recompute policy only: exited early, so the scheduler must send a
  // kv_fill item with loop_begin = exit_loop + 1 for these positions before
  // the request's next token reaches that loop; the engine keeps the exit
  // state until then (or until ReleaseState).
  bool needs_kv_fill = false;
};

struct StepResult {
  std::vector<ItemResult> items;  // parallel to StepPlan::items
};

// What the scheduler needs from an engine. The real one is
// engine/model_runner.h; tests substitute their own.
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;

  // Runs one step. An error fails every item of the plan (the scheduler ends
  // those requests with an error) but leaves the executor usable.
  virtual absl::StatusOr<StepResult> Execute(const StepPlan& plan) = 0;

  // Tokens per KV block and the number of blocks in the pool.
  virtual int32_t block_size() const = 0;
  virtual int32_t num_blocks() const = 0;

  // Drops every hidden state the engine keeps for `request` (recursive
  // models: partially looped tokens, pending recompute fills). The scheduler
  // calls it when a request finishes, is cancelled or preempted; later items
  // of the request must start at loop_begin 0. Unknown ids are a no-op.
  virtual void ReleaseState(RequestId request) {}

  // Starts `task` (host code that touches nothing of the engine's) on a
  // thread the next steps leave idle, and returns; the default runs it now.
  // The engine loop hands it the output thread's wake-up after a step
  // (EngineLoop::Options::delivery), a system call that would otherwise
  // delay the next step. The CPU runner gives it to a kernel worker, which
  // spins while the engine thread runs a step's serial ops (at one
  // sequence, most of them). One at a time: a task still outstanding is
  // waited for first, by this call or by the step that needs the worker.
  virtual void StartBeside(absl::AnyInvocable<void()> task) { task(); }
  // Returns once the task StartBeside() started has run (at once if none).
  virtual void WaitBeside() {}
};

}  // namespace strata

#endif  // STRATA_ENGINE_STEP_H_
