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
  // True when this token is one of the request's stop tokens: it ends the
  // request with kStop and should not be shown as text.
  bool is_stop_token = false;
};

struct RequestStats {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  absl::Duration queue_time;           // arrival to first scheduled step
  absl::Duration time_to_first_token;  // arrival to first token
  absl::Duration latency;              // arrival to finish
};

struct FinishInfo {
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

  // A new token. Return false to stop the request now (it then finishes with
  // kStop); e.g. the sink saw a stop string in the decoded text.
  virtual bool OnToken(const TokenEvent& event) = 0;

  // Exactly once per submitted request, including rejected-after-submit and
  // cancelled ones.
  virtual void OnFinish(const FinishInfo& info) = 0;
};

struct RequestSpec {
  std::vector<TokenId> prompt;  // not empty; validated by server/
  SamplingParams sampling;
  int32_t max_tokens = 256;  // >= 1
  // Tokens that end generation (the model's EOS unless ignore_eos, plus the
  // request's stop_token_ids).
  std::vector<TokenId> stop_token_ids;
  int32_t priority = 0;                       // higher first; FCFS among equals
  absl::Time arrival = absl::InfinitePast();  // set by Submit if left unset
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<RequestSink> sink;  // required
};

}  // namespace strata

#endif  // STRATA_SCHEDULER_REQUEST_H_
