// GenerationSink: the scheduler's RequestSink for one Completion/Chat call.
// It turns TokenEvents into CompletionChunks: incremental detokenization
// (never a partial UTF-8 character), stop strings (text up to the stop string
// is emitted, the stop string itself never is), stop tokens (counted, not
// shown), logprobs, and the final chunk with finish reason and usage.
//
// Lifetimes: the scheduler owns the sink (shared_ptr) until after OnFinish;
// the RPC reactor that listens may be done before that (client cancelled,
// deadline). The reactor calls Detach() before it is destroyed; the sink's
// mutex makes "deliver to the listener" and "detach" exclusive, so the sink
// never calls a destroyed listener.
#ifndef STRATA_SERVER_GENERATION_SINK_H_
#define STRATA_SERVER_GENERATION_SINK_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/incremental_detokenizer.h"
#include "engine/stop_string_matcher.h"
#include "engine/tokenizer.h"
#include "scheduler/request.h"
#include "server/metrics.h"
#include "strata/v1/generation.pb.h"

namespace strata {

// Receives a generation's output. Both methods are called on the engine
// thread with the sink's lock held: they must not block and must not call
// back into the sink.
class GenerationListener {
 public:
  virtual ~GenerationListener() = default;

  // Output of one token: its id (and logprob when asked), and the text it
  // completed (possibly "" while a character or a stop-string candidate is
  // incomplete).
  virtual void OnChunk(v1::CompletionChunk chunk) = 0;

  // Exactly once, last. `last` carries any text held back until the end,
  // finish_reason, stop_reason and usage. `status` is OK for LENGTH/STOP and
  // the cancellation or error otherwise.
  virtual void OnComplete(v1::CompletionChunk last, absl::Status status) = 0;
};

class GenerationSink : public RequestSink {
 public:
  struct Options {
    const Tokenizer* tokenizer = nullptr;  // borrowed; outlives the sink
    std::vector<std::string> stop_strings;
    bool logprobs = false;       // attach a TokenLogprob to each token
    Metrics* metrics = nullptr;  // borrowed; optional: told how it ended
  };

  // `listener` may be null (the output is then dropped).
  GenerationSink(const Options& options, GenerationListener* listener);

  // RequestSink (engine thread). OnToken returns false once a stop string
  // or stop token has ended the generation.
  bool OnToken(const TokenEvent& event) override;
  void OnFinish(const FinishInfo& info) override;

  // Any thread. After Detach() returns, the listener is never called again.
  void Detach();

 private:
  // Text of a token for logprob alternatives and stop reasons: its bytes,
  // with an incomplete UTF-8 character shown as U+FFFD.
  std::string TokenText(TokenId id) const;
  void Deliver(v1::CompletionChunk chunk);

  const Tokenizer& tokenizer_;
  const bool logprobs_;
  Metrics* const metrics_;

  // Engine-thread state (the scheduler never calls one sink concurrently).
  IncrementalDetokenizer detokenizer_;
  StopStringMatcher stop_matcher_;
  bool stopped_ = false;     // a stop string or stop token ended generation
  std::string stop_reason_;  // which one

  absl::Mutex mu_;
  GenerationListener* listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_GENERATION_SINK_H_
