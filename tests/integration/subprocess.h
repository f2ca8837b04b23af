// A child process for the integration tests: started with posix_spawn (safe
// in a process that already runs gRPC threads), stdout and stderr captured to
// files in a private scratch folder, stopped with SIGTERM then SIGKILL.
#ifndef STRATA_TESTS_INTEGRATION_SUBPROCESS_H_
#define STRATA_TESTS_INTEGRATION_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path) with the given arguments.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      const std::vector<std::string>& argv);

  // Kills (SIGKILL) and reaps the child if it still runs; removes scratch.
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // The exit status once the child has exited (128 + signal when a signal
  // ended it); nullopt while it runs. Wait() blocks up to `timeout`.
  std::optional<int> Poll();
  std::optional<int> Wait(absl::Duration timeout);

  // SIGTERM, then SIGKILL if it has not exited after `grace`. Returns the
  // exit status.
  int Terminate(absl::Duration grace);

  std::string ReadStdout() const;
  std::string ReadStderr() const;
  // A folder private to this child (e.g. for a port file).
  const std::string& scratch_dir() const { return scratch_dir_; }
  // The child's process id (to signal it).
  pid_t pid() const { return pid_; }

 private:
  Subprocess() = default;

  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  std::string scratch_dir_;
};

// Runs a command to completion (killed after `timeout`).
struct CommandResult {
  int exit_status = -1;
  std::string out;
  std::string err;
};
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout);

}  // namespace strata::testing

#endif  // STRATA_TESTS_INTEGRATION_SUBPROCESS_H_
