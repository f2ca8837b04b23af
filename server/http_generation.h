// HttpGeneration: the generations of one HTTP request (one per prompt; a
// /v1/completions batch has several, each with its n choices), submitted
// through the same ScheduledGeneration as a gRPC call, with their output
// gathered for the HTTP session that writes it.
//
// The session never blocks on the engine: the output worker (or engine) thread queues chunks
// here (merging a choice's chunks while the session is still writing, so a
// slow reader costs memory bounded by its max_tokens, never an engine stall)
// and calls `wake`, which posts the session's write loop onto its strand.
//
// Choice indices: prompt p's choice j is reported as p * n + j.
//
// Threading: Submit, Cancel, Take and Detach from the session's strand;
// the listeners from the output worker's thread (or the engine's). mu_ orders
// them.
#ifndef STRATA_SERVER_HTTP_GENERATION_H_
#define STRATA_SERVER_HTTP_GENERATION_H_

#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/scheduled_generation.h"

namespace strata {

class HttpGeneration {
 public:
  // Output taken by the session since its previous Take.
  struct Output {
    std::deque<v1::CompletionChunk> chunks;  // in arrival order
    bool complete = false;                   // every prompt's generation ended
    absl::Status status;  // when complete: the first failure, or OK
    v1::Usage usage;      // when complete: summed over the prompts
  };

  // `wake` is called on the output worker (or engine) thread after output was queued; it must
  // not block.
  HttpGeneration(Scheduler& scheduler, Metrics* metrics, OutputWorker* worker,
                 const Tokenizer& tokenizer, std::function<void()> wake);
  ~HttpGeneration();

  // Submits one generation per prompt, each with `n` choices. On failure
  // the ones already queued are cancelled and nothing is ever reported.
  // `key` is the caller's API key (the anonymous key when keys are off).
  absl::Status Submit(std::vector<PreparedRequest> prompts, int32_t n,
                      const ApiKey& key, absl::Time deadline);

  // Ends every generation at the scheduler's next step (the client left).
  void Cancel(const absl::Status& status);

  Output Take();

 private:
  // Listens to one prompt's generation and renumbers its choices.
  struct Part final : public GenerationListener {
    Part(HttpGeneration& owner, Scheduler& scheduler, Metrics* metrics,
         OutputWorker* worker, uint32_t index_offset)
        : owner(owner),
          generation(scheduler, metrics, worker),
          index_offset(index_offset) {}
    void OnChunk(v1::CompletionChunk chunk) override;
    void OnComplete(v1::CompletionChunk last, absl::Status status) override;

    HttpGeneration& owner;
    ScheduledGeneration generation;
    const uint32_t index_offset;
  };

  void Queue(v1::CompletionChunk chunk);
  void Complete(v1::CompletionChunk last, const absl::Status& status);

  Scheduler& scheduler_;
  Metrics* const metrics_;
  OutputWorker* const worker_;
  const Tokenizer& tokenizer_;
  const std::function<void()> wake_;
  std::vector<std::unique_ptr<Part>> parts_;

  absl::Mutex mu_;
  Output pending_ ABSL_GUARDED_BY(mu_);
  size_t num_complete_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_GENERATION_H_
