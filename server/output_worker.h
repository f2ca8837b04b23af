// OutputWorker: the thread that turns the engine's token ids into what
// clients see (incremental detokenization, stop strings, logprob text,
// chunks handed to the RPC reactors), so the engine thread only runs steps.
// GenerationSink posts each engine event here; events run in the order
// posted, so one request's events stay in order. A stop string found here
// ends its choice through Scheduler::StopSequence, the queue a client's
// cancel uses, at the scheduler's next step.
//
// Threading: Post() and WaitIdle() from any thread; tasks run on the
// worker's one thread.
#ifndef STRATA_SERVER_OUTPUT_WORKER_H_
#define STRATA_SERVER_OUTPUT_WORKER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata {

class OutputWorker {
 public:
  // Starts the thread.
  OutputWorker();
  // Runs every task posted so far, then joins the thread.
  ~OutputWorker();
  OutputWorker(const OutputWorker&) = delete;
  OutputWorker& operator=(const OutputWorker&) = delete;

  // Queues `task` after every task posted before it.
  void Post(std::function<void()> task);

  // Waits until no task is queued or running; false at the timeout.
  bool WaitIdle(absl::Duration timeout);

  // Tasks run so far (tests and metrics).
  int64_t num_done() const;

 private:
  void Run();

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_done_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_OUTPUT_WORKER_H_
