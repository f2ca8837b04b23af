// GenerationSink: the scheduler's RequestSink for one Completion/Chat call.
// It turns TokenEvents into CompletionChunks: incremental detokenization
// (never a partial UTF-8 character), stop strings (text up to the stop string
// is emitted, the stop string itself never is), stop tokens (counted, not
// shown), logprobs, and the final chunk with finish reason and usage.
//
// With n > 1 choices each choice has its own detokenizer and stop matcher;
// every chunk carries its choice's index, and each choice's last chunk its
// finish_reason and stop_reason. The chunk that ends the last choice to end
// is held back and becomes the final chunk (OnComplete), with the usage, so
// for n = 1 the output is exactly the single-choice stream. The token that
// ends a choice (TokenEvent::ends_sequence) is not a chunk of its own: it
// opens its choice's last chunk.
//
// Threads: with an OutputWorker (Options::worker) the RequestSink methods,
// called on the engine thread, only post the event to the worker, where the
// detokenizing, stop strings and delivery run; a stop string found there
// ends its choice through Options::on_stop (Scheduler::StopSequence), and
// OnToken refuses further tokens of a choice known to have stopped. OnToken
// posts without waking a sleeping worker (OutputWorker::PostDeferred): the
// engine loop wakes it beside the next step (EngineLoop::Options::delivery).
// Without a worker everything runs on the caller's thread, at once.
//
// Lifetimes: the scheduler owns the sink (shared_ptr) until after OnFinish;
// posted events hold it too, until they have run;
// the RPC reactor that listens may be done before that (client cancelled,
// deadline). The reactor calls Detach() before it is destroyed; the sink's
// mutex makes "deliver to the listener" and "detach" exclusive, so the sink
// never calls a destroyed listener.
#ifndef STRATA_SERVER_GENERATION_SINK_H_
#define STRATA_SERVER_GENERATION_SINK_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/request.h"
#include "server/metrics.h"
#include "server/output_worker.h"
#include "strata/v1/generation.pb.h"
#include "text/incremental_detokenizer.h"
#include "text/stop_string_matcher.h"
#include "text/tokenizer.h"

namespace strata {

// Receives a generation's output. Both methods are called on the sink's
// output thread (the OutputWorker; the engine thread without one) with the
// sink's lock held: they must not block and must not call back into the
// sink.
class GenerationListener {
 public:
  virtual ~GenerationListener() = default;

  // Output of one token: its id (and logprob when asked), and the text it
  // completed (possibly "" while a character or a stop-string candidate is
  // incomplete).
  virtual void OnChunk(v1::CompletionChunk chunk) = 0;

  // Exactly once, last. `last` carries any text held back until the end,
  // finish_reason, stop_reason and usage (with n > 1: the end of the last
  // choice to end, with the request's usage). `status` is OK for
  // LENGTH/STOP and the cancellation or error otherwise.
  virtual void OnComplete(v1::CompletionChunk last, absl::Status status) = 0;
};

class GenerationSink : public RequestSink,
                       public std::enable_shared_from_this<GenerationSink> {
 public:
  struct Options {
    const Tokenizer* tokenizer = nullptr;  // borrowed; outlives the sink
    std::vector<std::string> stop_strings;
    bool logprobs = false;       // attach a TokenLogprob to each token
    Metrics* metrics = nullptr;  // borrowed; optional: told how it ended
    int32_t n = 1;               // choices (RequestSpec::n), >= 1
    // Borrowed; outlives the sink's events. nullptr: handle events inline.
    OutputWorker* worker = nullptr;
    // With a worker: called there when a stop string ends choice `index`,
    // so the scheduler stops generating it (Scheduler::StopSequence).
    std::function<void(int32_t index)> on_stop = nullptr;
    // The API key's name, for per-key metrics ("" = none).
    std::string key_name = "";
  };

  // `listener` may be null (the output is then dropped).
  GenerationSink(const Options& options, GenerationListener* listener);

  // RequestSink (engine thread). OnToken returns false once a stop string
  // or stop token is known to have ended the event's choice. Must be owned
  // by a shared_ptr when there is a worker.
  bool OnToken(const TokenEvent& event) override;
  void OnSequenceFinish(int32_t index, FinishReason reason) override;
  void OnFinish(const FinishInfo& info) override;

  // Any thread. After Detach() returns, the listener is never called again.
  void Detach();

 private:
  // One choice's decoding state.
  struct Choice {
    Choice(const Tokenizer& tokenizer,
           const StopStringMatcher::StopStrings& stop_strings)
        : detokenizer(tokenizer, /*skip_special_tokens=*/true),
          stop_matcher(StopStringMatcher::Sharing(stop_strings)) {}
    IncrementalDetokenizer detokenizer;
    StopStringMatcher stop_matcher;
    bool stopped = false;     // a stop string or stop token ended it
    std::string stop_reason;  // which one
    bool finished = false;    // its last chunk was made
    // The chunk of the token that ends the choice (TokenEvent::
    // ends_sequence), sent with the choice's last chunk: one message and
    // the call's status in one write, where two writes made the client
    // wait for the first to complete before it saw the call end.
    std::optional<v1::CompletionChunk> held_token;
  };

  // The RequestSink methods' work, on the output thread.
  bool HandleToken(const TokenEvent& event);
  void HandleSequenceFinish(int32_t index, FinishReason reason);
  void HandleFinish(const FinishInfo& info);

  // Text of a token for logprob alternatives and stop reasons: its bytes,
  // with an incomplete UTF-8 character shown as U+FFFD.
  std::string TokenText(TokenId id) const;
  // The last chunk of choice `index`: text held back, finish and stop
  // reason. Delivered at once unless it ends the last open choice; then it
  // is kept in held_last_ for OnFinish.
  void FinishChoice(int32_t index, FinishReason reason);
  // `last` of choice `index`, after the choice's held token if it has one.
  v1::CompletionChunk WithHeldToken(int32_t index, v1::CompletionChunk last);
  void Deliver(v1::CompletionChunk chunk);

  friend class GenerationSinkTestPeer;

  const Tokenizer& tokenizer_;
  const bool logprobs_;
  Metrics* const metrics_;
  const std::string key_name_;
  OutputWorker* const worker_;
  const std::function<void(int32_t)> on_stop_;
  // stopped_[i]: choice i ended by a stop string or token (set on the output
  // thread, read by OnToken on the engine thread). [n]
  std::unique_ptr<std::atomic<bool>[]> stopped_;

  // Output-thread state (the scheduler never calls one sink concurrently,
  // and the worker runs its events in order).
  std::vector<Choice> choices_;  // [n], sharing one copy of the stop strings
  // Loops run by the tokens delivered so far (recursive models), for
  // Usage.mean_loops.
  int64_t total_loops_ = 0;
  int64_t num_tokens_ = 0;
  // Tokens the scheduler generated after their choice's stop string (with a
  // worker the stop reaches it a step late): dropped, and taken off the
  // usage's completion tokens. Counted on both threads.
  std::atomic<int32_t> num_dropped_{0};
  int32_t num_finished_ = 0;
  std::optional<v1::CompletionChunk> held_last_;

  absl::Mutex mu_;
  GenerationListener* listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_GENERATION_SINK_H_
