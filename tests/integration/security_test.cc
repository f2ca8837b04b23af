// API keys, per-key limits, the server's own time limit and the request
// size limits, against the real daemon over loopback (docs/security.md).
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
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
using ::testing::HasSubstr;

constexpr char kAliceKey[] = "sk-alice-0123456789";
constexpr char kBobKey[] = "sk-bob-9876543210";

std::string WriteKeys(const std::string& text) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "strata_keys_", getpid(), "_",
                   absl::ToUnixNanos(absl::Now()));
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

// One Complete call with `key` ("" = no authorization metadata).
grpc::Status Complete(StratadDaemon& daemon, const std::string& key,
                      const v1::CompletionRequest& request,
                      v1::CompletionResponse* response = nullptr) {
  auto stub = v1::Generation::NewStub(daemon.channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
  v1::CompletionResponse ignored;
  return stub->Complete(&context, request,
                        response != nullptr ? response : &ignored);
}

std::string Scrape(int port) {
  return strata::testing::HttpBody(strata::testing::HttpGet(port, "/metrics"));
}

// One POST /v1/completions over the HTTP API with `key` ("" = no
// Authorization header); the HTTP status.
int HttpComplete(int port, const std::string& key) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  stream.connect(resolver.resolve("127.0.0.1", std::to_string(port)));
  http::request<http::string_body> request(http::verb::post, "/v1/completions",
                                           11);
  request.set(http::field::host, "127.0.0.1");
  request.set(http::field::content_type, "application/json");
  if (!key.empty()) request.set(http::field::authorization, "Bearer " + key);
  request.body() = R"({"prompt": "Hello", "max_tokens": 2, "temperature": 0})";
  request.prepare_payload();
  http::write(stream, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(stream, buffer, response);
  return static_cast<int>(response.result_int());
}

TEST(SecurityTest, ApiKeysGuardGenerationButNotHealth) {
  const std::string keys =
      WriteKeys(absl::StrCat("alice ", kAliceKey, "\nbob ", kBobKey, "\n"));
  const int metrics_port = strata::testing::FreePort();
  auto daemon =
      StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                           {"--api_keys_file=" + keys,
                            absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // Health answers without a key (Start waited for SERVING through it).
  EXPECT_EQ(*(*daemon)->Health("strata.v1.Generation"),
            HealthCheckResponse::SERVING);

  EXPECT_EQ(Complete(**daemon, "", GreedyCompletion(2)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Complete(**daemon, "sk-wrong", GreedyCompletion(2)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  {
    auto stub = v1::Generation::NewStub((*daemon)->channel());
    grpc::ClientContext context;
    v1::ModelInfo info;
    EXPECT_EQ(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info)
                  .error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  v1::CompletionResponse response;
  const grpc::Status ok =
      Complete(**daemon, kAliceKey, GreedyCompletion(3), &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.usage().completion_tokens(), 3u);

  // Metrics name the key, never show it.
  const std::string metrics = Scrape(metrics_port);
  EXPECT_EQ(
      strata::testing::PrometheusValue(
          metrics, "strata_key_requests_total{key=\"alice\",outcome=\"ok\"}"),
      1);
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics, "strata_key_generation_tokens_total{key=\"alice\"}"),
            3);
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics, "strata_unauthenticated_requests_total"),
            3);
  EXPECT_EQ(metrics.find("sk-"), std::string::npos);
  std::remove(keys.c_str());
}

// The OpenAI HTTP API checks the same keys: 401 without or with a wrong
// key, the key's tenant and metrics with a right one.
TEST(SecurityTest, HttpApiChecksTheSameKeys) {
  const std::string keys =
      WriteKeys(absl::StrCat("alice ", kAliceKey, "\nbob ", kBobKey, "\n"));
  const int metrics_port = strata::testing::FreePort();
  const int http_port = strata::testing::FreePort();
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {"--api_keys_file=" + keys, absl::StrCat("--http_port=", http_port),
       absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  EXPECT_EQ(HttpComplete(http_port, ""), 401);
  EXPECT_EQ(HttpComplete(http_port, "sk-wrong"), 401);
  EXPECT_EQ(HttpComplete(http_port, kBobKey), 200);
  const std::string metrics = Scrape(metrics_port);
  EXPECT_EQ(
      strata::testing::PrometheusValue(
          metrics, "strata_key_requests_total{key=\"bob\",outcome=\"ok\"}"),
      1);
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics, "strata_unauthenticated_requests_total"),
            2);
  std::remove(keys.c_str());
}

TEST(SecurityTest, SighupReloadsTheKeys) {
  const std::string keys = WriteKeys(absl::StrCat("alice ", kAliceKey, "\n"));
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--api_keys_file=" + keys});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_TRUE(Complete(**daemon, kAliceKey, GreedyCompletion(1)).ok());
  std::ofstream(keys, std::ios::trunc) << "bob " << kBobKey << "\n";
  ASSERT_EQ(kill((*daemon)->process().pid(), SIGHUP), 0);
  // The reload runs on the daemon's signal thread: wait for it (bounded).
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline &&
         !Complete(**daemon, kBobKey, GreedyCompletion(1)).ok()) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(Complete(**daemon, kBobKey, GreedyCompletion(1)).ok());
  EXPECT_EQ(Complete(**daemon, kAliceKey, GreedyCompletion(1)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE((*daemon)->Alive());
  std::remove(keys.c_str());
}

// The engine is stalled, so the first request is surely still held when the
// second arrives; the key allows one at a time.
TEST(SecurityTest, PerKeyConcurrencyLimitIsResourceExhaustedNamingIt) {
  StallHook stall;
  const std::string keys = WriteKeys(absl::StrCat(
      "alice ", kAliceKey, " max_concurrency=1\nbob ", kBobKey, "\n"));
  const int metrics_port = strata::testing::FreePort();
  auto daemon =
      StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                           {"--api_keys_file=" + keys,
                            absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  stall.Stall();
  auto stub = v1::Generation::NewStub((*daemon)->channel());
  grpc::ClientContext first_context;
  first_context.AddMetadata("authorization",
                            std::string("Bearer ") + kAliceKey);
  const v1::CompletionRequest first_request = GreedyCompletion(4);
  v1::CompletionResponse first_response;
  grpc::Status first_status;
  absl::Notification first_done;
  stub->async()->Complete(&first_context, &first_request, &first_response,
                          [&](grpc::Status status) {
                            first_status = std::move(status);
                            first_done.Notify();
                          });
  // Bounded wait until the first is queued (scrapes read the scheduler's
  // counters): a second then hits the limit.
  double waiting = 0;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(20);
       waiting < 1 && absl::Now() < give_up;
       absl::SleepFor(absl::Milliseconds(20))) {
    waiting = strata::testing::PrometheusValue(Scrape(metrics_port),
                                               "strata_requests_waiting");
  }
  ASSERT_EQ(waiting, 1);
  const grpc::Status second =
      Complete(**daemon, kAliceKey, GreedyCompletion(1));
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(second.error_message(), HasSubstr("max_concurrency"));
  stall.Release();
  ASSERT_TRUE(first_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_TRUE(first_status.ok()) << first_status.error_message();
  EXPECT_TRUE(Complete(**daemon, kBobKey, GreedyCompletion(1)).ok());
  std::remove(keys.c_str());
}

// The call sets no deadline; the server's --max_request_time ends it. The
// engine is held until that time has passed, so the request cannot finish
// first.
TEST(SecurityTest, MaxRequestTimeEndsARequestWithDeadlineExceeded) {
  StallHook stall;
  const int metrics_port = strata::testing::FreePort();
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {"--max_request_time=1s", absl::StrCat("--metrics_port=", metrics_port)});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  stall.Stall();
  auto stub = v1::Generation::NewStub((*daemon)->channel());
  grpc::ClientContext context;
  v1::CompletionResponse response;
  grpc::Status status;
  absl::Notification done;
  const v1::CompletionRequest request = GreedyCompletion(200);
  stub->async()->Complete(&context, &request, &response, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  // Parked with work means the request is in, so its time has started;
  // then the engine stays held until that time has passed.
  ASSERT_TRUE(stall.AwaitParked());
  absl::SleepFor(absl::Milliseconds(1500));  // past max_request_time
  stall.Release();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_EQ(
      strata::testing::PrometheusValue(
          Scrape(metrics_port), "strata_requests_total{outcome=\"deadline\"}"),
      1);
}

TEST(SecurityTest, OversizedPromptsAreRefusedBeforeTokenizing) {
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--max_prompt_bytes=1000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  v1::CompletionRequest request = GreedyCompletion(1);
  request.set_text(std::string(1001, 'a'));
  const grpc::Status text = Complete(**daemon, "", request);
  EXPECT_EQ(text.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(text.error_message(), HasSubstr("prompt.text"));
  // A body past the message limit is refused by gRPC before it is parsed.
  request.set_text(std::string(200 << 10, 'a'));
  EXPECT_EQ(Complete(**daemon, "", request).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE((*daemon)->Alive());
}

}  // namespace
}  // namespace strata
