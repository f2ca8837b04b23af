// Where a model's steps spent their time, part by part, counted since the
// model was created. strata-engine-bench reads it to put the LM head and an
// exit check in loops from inside the same steps: a difference of two step
// timings swings by more than a hidden-state exit check costs, and timings
// of separate runs drift apart on a shared machine (the head's cost in
// loops, h, moved from 0.35 to 0.65 between runs when it was the difference
// of two best-of-rounds step times; docs/recursive-models.md).
//
// The parts are timed on the host around the backend's ops. The CPU
// backend's ops run before they return, so there they are the ops' cost; a
// device backend only queues most ops, so there a part's time is mostly
// launches, and the parts that read results back wait for the queue.
#ifndef STRATA_ENGINE_STEP_TIMINGS_H_
#define STRATA_ENGINE_STEP_TIMINGS_H_

#include <chrono>
#include <cstdint>

namespace strata {

struct StepTimings {
  // Nanoseconds from `start` to now: a part's time.
  static int64_t NanosecondsSince(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now() - start)
        .count();
  }

  struct Part {
    int64_t nanoseconds = 0;
    int64_t rows = 0;

    Part& operator+=(const Part& other) {
      nanoseconds += other.nanoseconds;
      rows += other.rows;
      return *this;
    }
    // Nanoseconds per row since `before` (0 without rows).
    double PerRowSince(const Part& before) const {
      const int64_t n = rows - before.rows;
      return n > 0 ? static_cast<double>(nanoseconds - before.nanoseconds) /
                         static_cast<double>(n)
                   : 0.0;
    }
  };
  // The K layers of each round; rows: row-loops (a row per loop it ran).
  Part loops;
  // The LM head of the rows whose tokens finished (at the last loop, or
  // exiting through a hidden-state measure); rows: those rows. An exit
  // check's own exit logits count under exit_checks.
  Part head;
  // Deciding early exits: planning the checks, saturation's copy of the
  // states before a loop, the confidences and the per-row decisions, and
  // for max_prob and margin the exit logits' LM head; rows: row checks, one
  // per row and loop boundary the exit rule evaluated.
  Part exit_checks;
  // ModelRunner: the logits' copy to the host and host sampling; rows:
  // sampled tokens (device sampling is not timed).
  Part sampling;
  // The K/V of the loops early exits skipped, propagated from the exit
  // states (KvFillPolicy::kPropagate); rows: exited rows. On the engine
  // thread: planning them, handing them to the host task that writes them
  // (Backend::StartHostTask) and waiting for it after sampling
  // (LlamaModel::JoinPropagation), not the task's own time, and writing
  // them at once (LlamaModel::FinishStep). A lone item's rows that join
  // the next step's first round count in that round's `loops`.
  Part propagation;
};

}  // namespace strata

#endif  // STRATA_ENGINE_STEP_TIMINGS_H_
