// ScheduledGeneration: the scheduler side of one Completion/Chat call, shared
// by the gRPC reactors (server/generation_service.cc) and the HTTP sessions
// (server/http_generation.h), so that both protocols submit, cancel and
// detach the same way and every admission limit applies once.
//
// Also the chunk-merging helpers both protocols use to gather a unary
// response or to coalesce stream chunks while a write is in flight.
#ifndef STRATA_SERVER_SCHEDULED_GENERATION_H_
#define STRATA_SERVER_SCHEDULED_GENERATION_H_

#include <deque>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "scheduler/scheduler.h"
#include "server/api_key_store.h"
#include "server/generation_sink.h"
#include "server/metrics.h"
#include "server/output_worker.h"
#include "server/request_builder.h"
#include "strata/v1/generation.pb.h"
#include "text/tokenizer.h"

namespace strata {

// Threading: Submit runs before any thread can call Cancel, so the id is set
// before Cancel reads it; Cancel and Detach may then be called from any
// thread.
class ScheduledGeneration {
 public:
  // `worker` (borrowed; may be null: output then on the engine thread)
  // detokenizes and delivers the output (server/output_worker.h).
  ScheduledGeneration(Scheduler& scheduler, Metrics* metrics,
                      OutputWorker* worker)
      : scheduler_(scheduler), metrics_(metrics), worker_(worker) {}

  // On failure nothing was queued and `listener` is never called. `key`
  // (the caller's API key; the anonymous key when keys are off) names the
  // tenant and carries its limits.
  absl::Status Submit(PreparedRequest prepared, const ApiKey& key,
                      const Tokenizer& tokenizer, GenerationListener* listener,
                      absl::Time deadline);

  // Ends the request at the scheduler's next step (no-op if never queued).
  void Cancel(absl::Status status);

  // The listener is never called after this returns.
  void Detach();

 private:
  Scheduler& scheduler_;
  Metrics* const metrics_;
  OutputWorker* const worker_;
  std::shared_ptr<GenerationSink> sink_;
  std::optional<RequestId> id_;
};

// Appends a chunk to the output gathered so far; the finish fields of the
// last chunk overwrite. Both chunks are of the same choice.
void AppendChunk(v1::CompletionChunk chunk, v1::CompletionChunk& into);

// Streams: a chunk joins the last one waiting to be written when it is of the
// same choice and that choice has not ended there (a slow reader gets fewer,
// larger chunks); otherwise it queues behind it. For n = 1 everything merges
// into one waiting chunk.
void QueueChunk(v1::CompletionChunk chunk,
                std::deque<v1::CompletionChunk>& pending);

// Unary: gathers a chunk into its choice of the response.
void AppendChunk(v1::CompletionChunk chunk, v1::CompletionResponse& into);

// The response's top-level fields mirror choice 0 (the only one for n = 1,
// as before choices existed).
void MirrorFirstChoice(v1::CompletionResponse& response);

}  // namespace strata

#endif  // STRATA_SERVER_SCHEDULED_GENERATION_H_
