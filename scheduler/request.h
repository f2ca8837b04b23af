// What a caller submits to the scheduler, and how it hears back.
#ifndef STRATA_SCHEDULER_REQUEST_H_
#define STRATA_SCHEDULER_REQUEST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/step.h"

namespace strata {

enum class FinishReason {
  kLength,     // max_tokens or the context length reached
  kStop,       // a stop token, or the sink asked to stop (stop string)
  kCancelled,  // Cancel() or the deadline passed
  kError,      // the engine failed a step this request was in
};

const char* FinishReasonName(FinishReason reason);

// One generated token, as delivered to the sink.
struct TokenEvent {
  SampledToken sampled;
  // True when this token is one of the request's stop tokens: it ends its
  // sequence with kStop and should not be shown as text.
  bool is_stop_token = false;
  // Which of the request's RequestSpec::n sequences (choices) it belongs to:
  // 0 <= index < n.
  int32_t index = 0;
  // Loops of a recursive model the token ran before it was sampled: N at
  // full depth, fewer after an early exit; 1 for a plain model.
  int32_t loops = 1;
  // True when the scheduler ends the sequence with this token (a stop token,
  // max_tokens or the model's length): its OnSequenceFinish follows in the
  // same step, so a sink may send the token with the sequence's last chunk.
  bool ends_sequence = false;
};

// For the whole request: with n > 1 the prompt counts once and the
// completion tokens of every sequence are summed.
struct RequestStats {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  // The most tokens any one sequence (choice) generated: the length of the
  // request's longest stream, for time per output token.
  int32_t longest_choice_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  absl::Duration queue_time;           // arrival to first scheduled step
  absl::Duration time_to_first_token;  // arrival to first token
  absl::Duration latency;              // arrival to finish
};

struct FinishInfo {
  // kCancelled or kError when the request was cancelled or failed (every
  // sequence ended with it); otherwise sequence 0's reason (each sequence's
  // own reason went to OnSequenceFinish).
  FinishReason reason = FinishReason::kLength;
  // OK unless reason is kCancelled (CANCELLED or DEADLINE_EXCEEDED) or kError.
  absl::Status status;
  RequestStats stats;
};

// Receives a request's output. Called on the engine thread only, never
// concurrently for one request; must not block for long (it runs inside the
// engine loop). After OnFinish the scheduler never calls the sink again.
class RequestSink {
 public:
  virtual ~RequestSink() = default;

  // A new token of sequence event.index. Return false to stop that sequence
  // now (it then finishes with kStop; its siblings go on); e.g. the sink saw
  // a stop string in its decoded text.
  virtual bool OnToken(const TokenEvent& event) = 0;

  // Sequence `index` ended with kLength or kStop; no more tokens for it.
  // Called once per sequence that ends so, before OnFinish; not for
  // sequences ended by a cancellation or a failure (OnFinish says that).
  virtual void OnSequenceFinish(int32_t index, FinishReason reason) {}

  // Exactly once per submitted request, after all of its sequences ended,
  // including rejected-after-submit and cancelled ones.
  virtual void OnFinish(const FinishInfo& info) = 0;
};

struct RequestSpec {
  std::vector<TokenId> prompt;  // not empty; validated by server/
  SamplingParams sampling;
  // Sequences (choices) to sample from the prompt, 1 <= n <= the scheduler's
  // max_num_seqs. They share the prompt's KV blocks (prefilled once); each
  // ends on its own; sequence i samples with seed sampling.seed + i.
  int32_t n = 1;
  int32_t max_tokens = 256;  // >= 1
  // Tokens that end generation (the model's EOS unless ignore_eos, plus the
  // request's stop_token_ids).
  std::vector<TokenId> stop_token_ids;
  // Early exit for recursive models (threshold >= 1: full depth, the
  // default); validated by server/.
  ExitParams exit;
  // Higher first, FCFS among equals: among the requests of one tenant, and
  // across tenants only for an admin tenant's requests (Scheduler, "Fair
  // admission").
  int32_t priority = 0;
  // Fairness and limits (docs/security.md): who sent the request (an API
  // key's name; "" without keys) and that key's limits, 0 = none.
  std::string tenant;
  bool admin = false;
  int32_t max_concurrency = 0;     // requests queued or running
  int64_t max_queued_tokens = 0;   // prompt tokens waiting for admission
  absl::Time arrival = absl::InfinitePast();  // set by Submit if left unset
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<RequestSink> sink;  // required
};

}  // namespace strata

#endif  // STRATA_SCHEDULER_REQUEST_H_
