// Operating the real daemon: warm-up before SERVING, readiness that proves
// forward progress (a test-only fault hook stalls the engine loop while a
// file exists: STRATA_TEST_STALL_FILE), drain on SIGTERM with 8 streams in
// flight, and a second SIGTERM exiting at once.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::grpc::health::v1::HealthCheckResponse;
using ::strata::testing::StratadDaemon;

constexpr char kGeneration[] = "strata.v1.Generation";

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
    unsetenv("STRATA_TEST_STALL_FILE");
  }
  void Stall() { std::ofstream(path_) << "stall\n"; }
  void Release() { std::filesystem::remove(path_); }

 private:
  std::string path_;
};

// Polls the health of `service` until it equals `want` (bounded).
bool AwaitHealth(StratadDaemon& daemon, const std::string& service,
                 HealthCheckResponse::ServingStatus want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    auto health = daemon.Health(service);
    if (health.ok() && *health == want) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

v1::CompletionRequest Greedy(uint32_t max_tokens) {
  v1::CompletionRequest request;
  request.mutable_token_ids()->add_ids(1792);
  request.mutable_token_ids()->add_ids(400);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

double Metric(int port, const std::string& series) {
  return strata::testing::PrometheusValue(
      strata::testing::HttpBody(strata::testing::HttpGet(port, "/metrics")),
      series);
}

TEST(OperationsTest, WarmUpStepRunsBeforeServing) {
  const int metrics_port = strata::testing::FreePort();
  auto daemon =
      StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                           {absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // SERVING was observed by Start(); no client request has been sent, yet an
  // engine step has run.
  EXPECT_GE(Metric(metrics_port, "strata_engine_steps_total"), 1);
  EXPECT_EQ(Metric(metrics_port, "strata_requests_total{outcome=\"ok\"}"), 0);
}

TEST(OperationsTest, StalledEngineTurnsReadinessOffAndBackOn) {
  StallHook hook;
  const int metrics_port = strata::testing::FreePort();
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {"--stall_timeout=1s", absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_EQ(*(*daemon)->Health(kGeneration), HealthCheckResponse::SERVING);

  hook.Stall();
  grpc::Status status;
  v1::CompletionResponse response;
  std::thread client([&] {
    auto stub = v1::Generation::NewStub((*daemon)->channel());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    status = stub->Complete(&context, Greedy(8), &response);
  });
  EXPECT_TRUE(
      AwaitHealth(**daemon, kGeneration, HealthCheckResponse::NOT_SERVING));
  // Liveness is separate.
  EXPECT_EQ(*(*daemon)->Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Metric(metrics_port, "strata_engine_stalled"), 1);

  hook.Release();
  EXPECT_TRUE(AwaitHealth(**daemon, kGeneration, HealthCheckResponse::SERVING));
  client.join();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.token_ids_size(), 8);
  EXPECT_EQ(Metric(metrics_port, "strata_engine_stalled"), 0);
}

TEST(OperationsTest, SigtermDrainsEightStreamsInFull) {
  StallHook hook;
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--shutdown_grace=60s"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::shared_ptr<grpc::Channel> channel = (*daemon)->channel();

  // Hold the engine so that all 8 streams are in flight at SIGTERM.
  hook.Stall();
  constexpr int kStreams = 8;
  constexpr uint32_t kTokens = 200;
  std::vector<int> received(kStreams, 0);
  std::vector<v1::FinishReason> finish(kStreams, v1::FINISH_REASON_UNSPECIFIED);
  std::vector<grpc::Status> statuses(kStreams);
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      auto stub = v1::Generation::NewStub(channel);
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::seconds(90));
      auto reader = stub->CompleteStream(&context, Greedy(kTokens));
      v1::CompletionChunk chunk;
      while (reader->Read(&chunk)) {
        received[i] += chunk.token_ids_size();
        if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          finish[i] = chunk.finish_reason();
        }
      }
      statuses[i] = reader->Finish();
    });
  }
  absl::SleepFor(absl::Milliseconds(1500));  // the 8 calls reach the server
  ASSERT_EQ(kill((*daemon)->process().pid(), SIGTERM), 0);

  // Draining: not ready, and new work is refused.
  EXPECT_TRUE(
      AwaitHealth(**daemon, kGeneration, HealthCheckResponse::NOT_SERVING));
  {
    auto stub = v1::Generation::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    v1::CompletionResponse response;
    const grpc::Status refused = stub->Complete(&context, Greedy(4), &response);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
        << refused.error_message();
  }

  hook.Release();
  for (auto& client : clients) client.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(received[i], static_cast<int>(kTokens)) << "stream " << i;
    EXPECT_EQ(finish[i], v1::FINISH_REASON_LENGTH) << "stream " << i;
  }
  const std::optional<int> exit_status =
      (*daemon)->process().Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_status.has_value());
  EXPECT_EQ(*exit_status, 0);
}

TEST(OperationsTest, SecondSigtermExitsAtOnce) {
  StallHook hook;
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--shutdown_grace=300s"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  hook.Stall();  // a request that cannot finish keeps the drain waiting
  std::thread client([&] {
    auto stub = v1::Generation::NewStub((*daemon)->channel());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::CompletionResponse response;
    stub->Complete(&context, Greedy(4), &response);
  });
  absl::SleepFor(absl::Milliseconds(300));
  const pid_t pid = (*daemon)->process().pid();
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_TRUE(
      AwaitHealth(**daemon, kGeneration, HealthCheckResponse::NOT_SERVING));
  EXPECT_FALSE((*daemon)->process().Wait(absl::Seconds(1)).has_value())
      << "the first SIGTERM should drain, not exit";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  const std::optional<int> exit_status =
      (*daemon)->process().Wait(absl::Seconds(10));
  ASSERT_TRUE(exit_status.has_value()) << "a second SIGTERM must exit at once";
  EXPECT_NE(*exit_status, 0);
  client.join();
}

}  // namespace
}  // namespace strata
