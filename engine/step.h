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

#include "absl/status/statusor.h"

namespace strata {

using TokenId = int32_t;
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
  std::optional<SampledToken> sampled;  // set iff the item asked to sample
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
};

}  // namespace strata

#endif  // STRATA_ENGINE_STEP_H_
