// OutputWorker: the thread that turns the engine's token ids into what
// clients see (incremental detokenization, stop strings, logprob text,
// chunks handed to the RPC reactors), so the engine thread only runs steps.
// GenerationSink posts each engine event here; events run in the order
// posted, so one request's events stay in order. A stop string found here
// ends its choice through Scheduler::StopSequence, the queue a client's
// cancel uses, at the scheduler's next step.
//
// Waking the sleeping thread costs the waker a system call (about 6.5 us
// on the 2-core VM, 4% of a token at one sequence), so the engine thread's
// per-token posts (PostDeferred) leave it to Wake(), which the engine loop
// hands to a thread the next step leaves idle (StepDelivery).
//
// Threading: Post(), PostDeferred(), Wake() and WaitIdle() from any thread;
// tasks run on the worker's one thread.
#ifndef STRATA_SERVER_OUTPUT_WORKER_H_
#define STRATA_SERVER_OUTPUT_WORKER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scheduler/engine_loop.h"

namespace strata {

class OutputWorker : public StepDelivery {
 public:
  // Starts the thread.
  OutputWorker();
  // Runs every task posted so far, then joins the thread.
  ~OutputWorker() override;

  OutputWorker(const OutputWorker&) = delete;
  OutputWorker& operator=(const OutputWorker&) = delete;

  // Queues `task` after every task posted before it and wakes the thread.
  void Post(std::function<void()> task);
  // Queues `task` the same way but leaves a sleeping thread asleep until
  // the next Wake() (or WaitIdle()); the caller sees that one follows.
  void PostDeferred(std::function<void()> task);
  // StepDelivery: whether a PostDeferred() found the thread asleep since
  // the last Wake(); and the wake-up it owes.
  bool WakeOwed() const override;
  void Wake() override;

  // Waits until no task is queued or running; false at the timeout. Wakes
  // the thread first.
  bool WaitIdle(absl::Duration timeout);

  // Tasks run so far (tests and metrics).
  int64_t num_done() const;

 private:
  void Run();

  mutable absl::Mutex mu_;
  // The thread sleeps on it while no task is queued. Not Mutex::Await: a
  // condition is evaluated, and its waiter woken, by every Unlock, which
  // would wake the thread from PostDeferred too.
  absl::CondVar ready_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool sleeping_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t num_done_ ABSL_GUARDED_BY(mu_) = 0;
  // Set by a PostDeferred() that found the thread asleep; cleared by Wake().
  std::atomic<bool> wake_owed_{false};
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_OUTPUT_WORKER_H_
