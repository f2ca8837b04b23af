// A real stratad started for a test: build/bin/stratad with --port=0 and a
// port file, considered up once grpc.health.v1 reports SERVING.
#ifndef STRATA_TESTS_INTEGRATION_STRATAD_DAEMON_H_
#define STRATA_TESTS_INTEGRATION_STRATAD_DAEMON_H_

#include <grpcpp/grpcpp.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.pb.h"
#include "tests/integration/subprocess.h"

namespace strata::testing {

// Paths of the build and the fixtures (compile definitions of the tests).
std::string StratadPath();
std::string StrataCliPath();
std::string TinyLlamaDir();

class StratadDaemon {
 public:
  // Bounded wait for SERVING; fails with the daemon's stderr if it exits or
  // does not come up in time.
  static constexpr absl::Duration kStartTimeout = absl::Seconds(60);
  // SIGTERM first; SIGKILL if still alive after this.
  static constexpr absl::Duration kStopGrace = absl::Seconds(10);

  // `credentials`: how this object's channel (and the SERVING check) talks
  // to the daemon; null = plaintext.
  static absl::StatusOr<std::unique_ptr<StratadDaemon>> Start(
      const std::string& model_dir,
      const std::vector<std::string>& extra_flags = {},
      std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

  ~StratadDaemon() { Stop(); }

  // SIGTERM (SIGKILL after kStopGrace); the exit status. Idempotent.
  // Drops this object's channel first: an idle client connection would
  // otherwise hold up the daemon's shutdown until it cuts connections.
  int Stop() {
    channel_.reset();
    return process_->Terminate(kStopGrace);
  }

  // Still running?
  bool Alive() { return !process_->Poll().has_value(); }

  // Health of `service` ("" = the whole server), or the RPC's error.
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service = "");

  const std::string& address() const { return address_; }
  // Null after Stop().
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  Subprocess& process() { return *process_; }

 private:
  StratadDaemon() = default;

  std::unique_ptr<Subprocess> process_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A greedy completion of a fixed two-token prompt that generates exactly
// `max_tokens` tokens (EOS ignored).
inline v1::CompletionRequest GreedyCompletion(uint32_t max_tokens) {
  v1::CompletionRequest request;
  request.mutable_token_ids()->add_ids(1792);
  request.mutable_token_ids()->add_ids(400);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}
// Polls `series` in http://127.0.0.1:PORT/metrics until it equals `want`;
// false (and a test failure naming the last value) after 60 s, so a broken
// daemon fails the test instead of hanging it.
bool AwaitMetric(int port, const std::string& series, double want);

// Sets STRATA_TEST_STALL_FILE for daemons started while it lives (children
// inherit the environment); the file itself is created and removed by the
// test to stall and release the engine.
class StallHook {
 public:
  StallHook()
      : path_(absl::StrCat(::testing::TempDir(), "strata_stall_", getpid(), "_",
                           absl::ToUnixNanos(absl::Now()))) {
    setenv("STRATA_TEST_STALL_FILE", path_.c_str(), 1);
  }
  ~StallHook() {
    Release();
    // A daemon killed while stalled leaves its marker behind.
    std::filesystem::remove(path_ + ".parked");
    unsetenv("STRATA_TEST_STALL_FILE");
  }
  void Stall() { std::ofstream(path_) << "stall\n"; }
  void Release() { std::filesystem::remove(path_); }
  // After Stall(): true once the engine loop has stopped between two steps
  // (it keeps PATH.parked while it waits there; scheduler/engine_loop.cc),
  // so no step can run until Release(). False after 60 s.
  bool AwaitParked() {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!std::filesystem::exists(path_ + ".parked")) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

 private:
  std::string path_;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_INTEGRATION_STRATAD_DAEMON_H_
