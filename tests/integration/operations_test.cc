// Operating the real daemon: warm-up before SERVING, readiness that proves
// forward progress (a test-only fault hook stalls the engine loop while a
// file exists: STRATA_TEST_STALL_FILE), drain on SIGTERM with 8 streams in
// flight, and a second SIGTERM exiting at once. The drain with load
// balancing in front is tests/integration/load_balancer_test.cc.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::grpc::health::v1::HealthCheckResponse;
using ::strata::testing::GreedyCompletion;
using ::strata::testing::StallHook;
using ::strata::testing::StratadDaemon;

constexpr char kGeneration[] = "strata.v1.Generation";

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

// A grpc.health.v1 Watch stream on a connection of its own, opened now: it
// keeps reporting while the daemon drains, when new connections (and so
// Check calls on them) are refused.
class HealthWatch {
 public:
  HealthWatch(const std::string& address, const std::string& service) {
    grpc::ChannelArguments args;
    args.SetString("strata.test.health_watch", service);  // own connection
    stub_ = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(
        address, grpc::InsecureChannelCredentials(), args));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    reader_ = stub_->Watch(&context_, request);
    reader_thread_ = std::thread([this] {
      HealthCheckResponse response;
      while (reader_->Read(&response)) {
        absl::MutexLock lock(&mu_);
        last_ = response.status();
      }
      reader_->Finish();
    });
  }
  ~HealthWatch() {
    context_.TryCancel();
    reader_thread_.join();
  }

  // Waits (bounded) until the last status received is `want`.
  bool Await(HealthCheckResponse::ServingStatus want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu_);
        if (last_ == want) return true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

 private:
  std::unique_ptr<grpc::health::v1::Health::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader_;
  std::thread reader_thread_;
  absl::Mutex mu_;
  std::optional<HealthCheckResponse::ServingStatus> last_ ABSL_GUARDED_BY(mu_);
};

// Waits (bounded) until connections to 127.0.0.1:port are refused.
bool AwaitRefused(int port) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const int rc =
        connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    const int error = errno;
    close(fd);
    if (rc != 0 && error == ECONNREFUSED) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

int PortOf(const StratadDaemon& daemon) {
  const std::string& address = daemon.address();
  return std::stoi(address.substr(address.rfind(':') + 1));
}

double Metric(int port, const std::string& series) {
  return strata::testing::ScrapeMetric(port, series);
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
    status = stub->Complete(&context, GreedyCompletion(8), &response);
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
  const int metrics_port = strata::testing::FreePort();
  ASSERT_GT(metrics_port, 0);
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {"--shutdown_grace=60s", absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  std::shared_ptr<grpc::Channel> channel = (*daemon)->channel();
  HealthWatch watch((*daemon)->address(), kGeneration);
  ASSERT_TRUE(watch.Await(HealthCheckResponse::SERVING));

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
      auto reader = stub->CompleteStream(&context, GreedyCompletion(kTokens));
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
  // The 8 calls have reached the server (queued behind the held engine).
  ASSERT_TRUE(strata::testing::AwaitMetric(
      metrics_port, "strata_requests_waiting", kStreams));
  ASSERT_EQ(kill((*daemon)->process().pid(), SIGTERM), 0);

  // Draining: not ready (a Watch opened before sees it)...
  EXPECT_TRUE(watch.Await(HealthCheckResponse::NOT_SERVING));
  // ...and new work is refused: the listener is closed, so a new client
  // connection is refused and its call fails with UNAVAILABLE.
  ASSERT_TRUE(AwaitRefused(PortOf(**daemon)));
  {
    grpc::ChannelArguments args;
    args.SetInt("strata.test.new_client", 1);  // a connection of its own
    auto stub = v1::Generation::NewStub(grpc::CreateCustomChannel(
        (*daemon)->address(), grpc::InsecureChannelCredentials(), args));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    v1::CompletionResponse response;
    const grpc::Status refused = stub->Complete(&context, GreedyCompletion(4), &response);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
        << refused.error_message();
  }

  // The streams were accepted before SIGTERM: they finish in full.
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
    stub->Complete(&context, GreedyCompletion(4), &response);
  });
  HealthWatch watch((*daemon)->address(), kGeneration);
  ASSERT_TRUE(watch.Await(HealthCheckResponse::SERVING));
  // The engine parks at the hook only with work: the request is in.
  ASSERT_TRUE(hook.AwaitParked());
  const pid_t pid = (*daemon)->process().pid();
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_TRUE(watch.Await(HealthCheckResponse::NOT_SERVING));
  EXPECT_FALSE((*daemon)->process().Wait(absl::Seconds(1)).has_value())
      << "the first SIGTERM should drain, not exit";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  const std::optional<int> exit_status =
      (*daemon)->process().Wait(absl::Seconds(10));
  ASSERT_TRUE(exit_status.has_value()) << "a second SIGTERM must exit at once";
  EXPECT_NE(*exit_status, 0);
  client.join();
}

// name -> nice of every thread of process `pid` (/proc/<pid>/task/*/comm and
// field 19 of stat); several threads of one name must agree (else -100).
std::map<std::string, int> ThreadNices(pid_t pid) {
  std::map<std::string, int> nices;
  for (const auto& task : std::filesystem::directory_iterator(
           absl::StrCat("/proc/", pid, "/task"))) {
    std::ifstream comm_file(task.path() / "comm");
    std::ifstream stat_file(task.path() / "stat");
    std::string name, stat;
    if (!std::getline(comm_file, name) || !std::getline(stat_file, stat)) {
      continue;  // exited meanwhile
    }
    // Fields after the ")" that ends the name: state is field 3, nice 19.
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    for (int i = 3; i <= 19 && fields >> field; ++i) {
    }
    const int nice = std::stoi(field);
    auto [it, inserted] = nices.emplace(name, nice);
    if (!inserted && it->second != nice) it->second = -100;
  }
  return nices;
}

TEST(OperationsTest, IoThreadsRunNicerThanTheEngine) {
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {"--threads=2",
       absl::StrCat("--http_port=", strata::testing::FreePort()),
       absl::StrCat("--metrics_port=", strata::testing::FreePort())});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // A generation first: gRPC starts some of its threads on demand, from
  // threads that are already nicer.
  auto stub = v1::Generation::NewStub((*daemon)->channel());
  grpc::ClientContext context;
  v1::CompletionResponse response;
  ASSERT_TRUE(stub->Complete(&context, GreedyCompletion(4), &response).ok());
  const std::map<std::string, int> nices =
      ThreadNices((*daemon)->process().pid());
  ASSERT_TRUE(nices.contains("strata-engine"));
  ASSERT_TRUE(nices.contains("strata-kernel"));  // --threads=2: one worker
  const int compute = nices.at("strata-engine");
  EXPECT_EQ(nices.at("strata-kernel"), compute);
  // The metrics listener answers scrapes at the engine's priority.
  ASSERT_TRUE(nices.contains("strata-metrics"));
  EXPECT_EQ(nices.at("strata-metrics"), compute);
  const int io = std::min(19, compute + 10);  // --io_nice's default
  for (const char* name : {"strata-output", "strata-accept", "strata-http",
                           "strata-watchdog", "stratad"}) {
    ASSERT_TRUE(nices.contains(name)) << name;
    EXPECT_EQ(nices.at(name), io) << name;
  }
  int others = 0;  // gRPC's own threads, whatever their names
  for (const auto& [name, nice] : nices) {
    if (name == "strata-engine" || name == "strata-kernel" ||
        name == "strata-metrics") {
      continue;
    }
    EXPECT_EQ(nice, io) << name;
    ++others;
  }
  EXPECT_GE(others, 6);

  // --io_nice=0: one priority for all.
  auto flat = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                   {"--threads=2", "--io_nice=0"});
  ASSERT_TRUE(flat.ok()) << flat.status();
  for (const auto& [name, nice] : ThreadNices((*flat)->process().pid())) {
    EXPECT_EQ(nice, compute) << name;
  }
}

}  // namespace
}  // namespace strata
