#include "tests/integration/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace strata::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(
    const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  std::string pattern =
      (std::filesystem::temp_directory_path() / "strata-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::unique_ptr<Subprocess> process(new Subprocess());
  process->scratch_dir_ = pattern;
  const std::string out_path = pattern + "/stdout";
  const std::string err_path = pattern + "/stderr";

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  // The test process may block signals in its threads; the child starts
  // with none blocked and default handlers.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attributes, &none);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setflags(&attributes,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args;
  for (const std::string& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  const int error = posix_spawn(&process->pid_, argv[0].c_str(), &actions,
                                &attributes, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (error != 0) {
    process->pid_ = -1;
    return absl::InternalError(
        absl::StrCat("posix_spawn ", argv[0], ": ", std::strerror(error)));
  }
  return process;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !Poll().has_value()) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  std::error_code ignored;
  std::filesystem::remove_all(scratch_dir_, ignored);
}

std::optional<int> Subprocess::Poll() {
  if (exit_status_.has_value() || pid_ <= 0) return exit_status_;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_status_ = DecodeWaitStatus(status);
  }
  return exit_status_;
}

std::optional<int> Subprocess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Poll().has_value() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return Poll();
}

int Subprocess::Terminate(absl::Duration grace) {
  if (Poll().has_value()) return *exit_status_;
  kill(pid_, SIGTERM);
  if (std::optional<int> status = Wait(grace); status.has_value()) {
    return *status;
  }
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  exit_status_ = DecodeWaitStatus(status);
  return *exit_status_;
}

std::string Subprocess::ReadStdout() const {
  return ReadFile(scratch_dir_ + "/stdout");
}

std::string Subprocess::ReadStderr() const {
  return ReadFile(scratch_dir_ + "/stderr");
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(argv);
  if (!process.ok()) return process.status();
  CommandResult result;
  std::optional<int> status = (*process)->Wait(timeout);
  if (!status.has_value()) {
    (*process)->Terminate(absl::ZeroDuration());
    return absl::DeadlineExceededError(absl::StrCat(
        argv[0], " did not exit within ", absl::FormatDuration(timeout),
        "; stderr:\n", (*process)->ReadStderr()));
  }
  result.exit_status = *status;
  result.out = (*process)->ReadStdout();
  result.err = (*process)->ReadStderr();
  return result;
}

}  // namespace strata::testing
