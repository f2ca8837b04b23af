// LowerIoThreadPriority: the daemon's I/O threads yield the CPU to its
// compute threads when both want it.
//
// Why: when every core is busy (a small machine streaming to many clients),
// Linux shares each core fairly among the runnable threads. The threads that
// stream output (gRPC's, the HTTP API's, the output worker) wake for every
// token and preempt the engine thread or a kernel worker mid-step; the step
// then waits for the preempted worker's task, and the engine's token rate
// falls by more than those threads' own share. On the 2-core VM of
// docs/serving.md ("Threads and CPU priority") the engine thread waited in
// the run queue for a quarter of the time at 8 clients; with the I/O threads
// at nice +10 the bundled model served 13-16% more tokens at 8 clients and
// 3-6% more at 32, and a 155M Llama the same as before. A thread at nice +10
// has a tenth of a nice-0 thread's weight, so it still runs whenever a core is
// free, and output that waits is merged into fewer, larger chunks (the stream
// reactors), so only latency under saturation moves.
//
// How: every thread of the process whose name is none of `compute_names`
// gets nice = (the compute threads' nice) + nice_delta, at most 19; threads
// already nicer are left alone. Threads those threads start later inherit it
// (Linux threads take their creator's nice), so gRPC's threads started on
// demand stay low too. Raising a nice value needs no privilege. Linux only.
#ifndef STRATA_SERVER_IO_PRIORITY_H_
#define STRATA_SERVER_IO_PRIORITY_H_

#include <span>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

struct IoPriorityReport {
  int compute_threads = 0;  // threads named in compute_names, left as they were
  int compute_nice = 0;     // their (lowest) nice value
  int io_threads = 0;       // the other threads, now at io_nice or nicer
  int io_nice = 0;
};

// FAILED_PRECONDITION when no thread of the process has a compute name;
// the setpriority error when a thread could not be lowered (threads that
// exit meanwhile are skipped).
absl::StatusOr<IoPriorityReport> LowerIoThreadPriority(
    int nice_delta, std::span<const std::string_view> compute_names);

}  // namespace strata

#endif  // STRATA_SERVER_IO_PRIORITY_H_
