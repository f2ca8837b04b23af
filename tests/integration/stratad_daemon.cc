#include "tests/integration/stratad_daemon.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/status_util.h"
#include "tests/testing/net_util.h"

namespace strata::testing {

std::string StratadPath() { return std::string(STRATA_BIN_DIR) + "/stratad"; }
std::string StrataCliPath() {
  return std::string(STRATA_BIN_DIR) + "/strata-cli";
}
std::string TinyLlamaDir() {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-llama";
}

absl::StatusOr<std::unique_ptr<StratadDaemon>> StratadDaemon::Start(
    const std::string& model_dir, const std::vector<std::string>& extra_flags,
    std::shared_ptr<grpc::ChannelCredentials> credentials) {
  if (credentials == nullptr) {
    credentials = grpc::InsecureChannelCredentials();
  }
  std::unique_ptr<StratadDaemon> daemon(new StratadDaemon());
  // The port file's path must be known before the process exists.
  std::vector<std::string> argv = {StratadPath(), "--model=" + model_dir,
                                   "--port=0", "--host=127.0.0.1"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  const std::string port_file =
      (std::filesystem::temp_directory_path() /
       absl::StrCat("stratad-test-", getpid(), "-",
                    absl::ToUnixNanos(absl::Now()), ".port"))
          .string();
  argv.push_back("--port_file=" + port_file);

  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(argv);
  if (!process.ok()) return process.status();
  daemon->process_ = *std::move(process);

  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (true) {
    if (std::optional<int> status = daemon->process_->Poll();
        status.has_value()) {
      std::remove(port_file.c_str());
      return absl::FailedPreconditionError(absl::StrCat(
          "stratad exited with status ", *status, " before serving; stderr:\n",
          daemon->process_->ReadStderr()));
    }
    if (daemon->channel_ == nullptr) {
      std::ifstream in(port_file);
      std::string line;
      int port = 0;
      if (std::getline(in, line) &&
          absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &port) &&
          port > 0) {
        std::remove(port_file.c_str());
        daemon->address_ = absl::StrCat("127.0.0.1:", port);
        daemon->channel_ = grpc::CreateChannel(daemon->address_, credentials);
      }
    }
    if (daemon->channel_ != nullptr) {
      auto health = daemon->Health();
      if (health.ok() &&
          *health == grpc::health::v1::HealthCheckResponse::SERVING) {
        return daemon;
      }
    }
    if (absl::Now() >= deadline) {
      daemon->Stop();
      std::remove(port_file.c_str());
      return absl::DeadlineExceededError(
          absl::StrCat("stratad did not report SERVING within ",
                       absl::FormatDuration(kStartTimeout), "; stderr:\n",
                       daemon->process_->ReadStderr()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

bool AwaitMetric(int port, const std::string& series, double want) {
  const absl::Time until = absl::Now() + absl::Seconds(60);
  while (absl::Now() < until) {
    if (ScrapeMetric(port, series) == want) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ADD_FAILURE() << series << " never reached " << want << " (last "
                << ScrapeMetric(port, series) << ")";
  return false;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
StratadDaemon::Health(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.status();
}

}  // namespace strata::testing
