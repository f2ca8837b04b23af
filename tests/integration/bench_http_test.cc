// strata-bench's load runner over the OpenAI-compatible HTTP API against the
// real daemon: the same workload completes over HTTP as over gRPC with the
// same token counts and one timing per token; an HTTP error is recorded by
// its status with the server's message; the bench's own cancels at the max
// run time are not failures; our exit fields reach the daemon. Over HTTPS
// (the daemon with --tls_cert) the same --tls_* options as for gRPC carry
// the stream; a handshake that fails is a failed request naming TLS and the
// certificate check, never a crash.
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench/load_runner.h"
#include "bench/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/pki.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using bench::LoadRunner;
using bench::Protocol;
using bench::RequestRecord;
using strata::testing::GrpcTlsCredentials;
using strata::testing::StallHook;
using strata::testing::StratadDaemon;
using ::testing::HasSubstr;

std::string RecursiveTinyDir() {
  return std::string(STRATA_SOURCE_DIR) + "/models/strata-recursive-tiny";
}

std::unique_ptr<bench::Workload> TokenWorkload(int32_t input_len,
                                               int32_t output_len) {
  bench::Workload::Options o;
  o.input_len = input_len;
  o.output_len = output_len;
  o.min_token_id = 300;
  o.max_token_id = 1500;
  o.seed = 7;
  auto workload = bench::Workload::Create(o);
  EXPECT_TRUE(workload.ok()) << workload.status();
  return *std::move(workload);
}

// `requests` requests from `clients` closed-loop clients.
LoadRunner::RunResult RunPhase(LoadRunner& runner,
                               const bench::Workload& workload,
                               int64_t requests, int32_t clients) {
  LoadRunner::RunOptions run;
  run.concurrency = clients;
  run.num_requests = requests;
  run.max_run_time = absl::Minutes(5);
  auto result = runner.Run(workload, run);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *std::move(result) : LoadRunner::RunResult{};
}

class BenchHttpTest : public ::testing::Test {
 protected:
  void StartDaemon() {
    http_port_ = strata::testing::FreePort();
    auto daemon = StratadDaemon::Start(
        RecursiveTinyDir(), {absl::StrCat("--http_port=", http_port_)});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
  }

  std::unique_ptr<LoadRunner> Runner(Protocol protocol,
                                     LoadRunner::Options options = {}) {
    options.target = daemon_->address();
    options.protocol = protocol;
    options.http_target = absl::StrCat("127.0.0.1:", http_port_);
    auto runner = LoadRunner::Create(options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? *std::move(runner) : nullptr;
  }

  int http_port_ = 0;
  std::unique_ptr<StratadDaemon> daemon_;
};

TEST_F(BenchHttpTest, SameWorkloadOverHttpAsOverGrpc) {
  StartDaemon();
  auto workload = TokenWorkload(24, 9);
  for (Protocol protocol : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(bench::ProtocolName(protocol));
    auto runner = Runner(protocol);
    ASSERT_NE(runner, nullptr);
    const LoadRunner::RunResult result = RunPhase(*runner, *workload, 12, 4);
    EXPECT_FALSE(result.aborted) << result.abort_reason;
    ASSERT_EQ(result.records.size(), 12u);
    EXPECT_GE(result.max_concurrent_requests, 2);
    for (const RequestRecord& r : result.records) {
      EXPECT_TRUE(r.success) << r.error_code << ": " << r.error_message;
      EXPECT_EQ(r.prompt_tokens, 24);
      EXPECT_EQ(r.output_tokens, 9);
      EXPECT_GT(r.ttft_s, 0);
      // Every token timed: with return_token_ids a chunk counts as many
      // tokens as it carries, so chunks <= tokens; the daemon's streams
      // merge only for slow readers.
      EXPECT_GE(r.itl_s.size() + 1, 1u);
      EXPECT_LE(r.itl_s.size() + 1, 9u);
      EXPECT_LE(r.ttft_s, r.e2el_s);
    }
  }
}

TEST_F(BenchHttpTest, ExitFieldsAndChatTravelOverHttp) {
  StartDaemon();
  auto runner = Runner(Protocol::kHttp,
                       {.exit_threshold = 0.5f,
                        .exit_confidence = v1::EXIT_CONFIDENCE_CLASSIFIER});
  ASSERT_NE(runner, nullptr);
  bench::DatasetEntry chat;
  chat.messages = {{"system", "Be brief."}, {"user", "In the beginning"}};
  chat.output_len = 5;
  bench::Workload::Options o;
  o.kind = bench::WorkloadKind::kDataset;
  auto workload = bench::Workload::CreateFromEntries(o, {chat});
  ASSERT_TRUE(workload.ok()) << workload.status();
  const LoadRunner::RunResult result = RunPhase(*runner, **workload, 2, 1);
  ASSERT_EQ(result.records.size(), 2u);
  for (const RequestRecord& r : result.records) {
    EXPECT_TRUE(r.success) << r.error_code << ": " << r.error_message;
    EXPECT_EQ(r.output_tokens, 5);
    EXPECT_GT(r.prompt_tokens, 5);
  }
}

TEST_F(BenchHttpTest, HttpErrorIsRecordedByStatusWithTheMessage) {
  StartDaemon();
  auto runner = Runner(Protocol::kHttp, {.abort_after_consecutive_errors = 3});
  ASSERT_NE(runner, nullptr);
  // A prompt longer than the model's context (1024) can never run:
  // INVALID_ARGUMENT, HTTP 400, naming the prompt.
  auto workload = TokenWorkload(3000, 4);
  const LoadRunner::RunResult result = RunPhase(*runner, *workload, 5, 1);
  EXPECT_TRUE(result.aborted);
  EXPECT_THAT(result.abort_reason, HasSubstr("3 requests failed in a row"));
  ASSERT_EQ(result.records.size(), 3u);
  for (const RequestRecord& r : result.records) {
    EXPECT_FALSE(r.success);
    EXPECT_FALSE(r.cancelled_by_bench);
    EXPECT_EQ(r.error_code, "HTTP_400");
    EXPECT_THAT(r.error_message, HasSubstr("prompt"));
  }
}

TEST_F(BenchHttpTest, CancelsAtMaxRunTimeAreNotFailures) {
  StallHook hook;  // set before the daemon starts: it inherits the variable
  StartDaemon();
  auto runner = Runner(Protocol::kHttp);
  ASSERT_NE(runner, nullptr);
  hook.Stall();  // nothing can finish: the run must end by cancelling
  auto workload = TokenWorkload(8, 4);
  LoadRunner::RunOptions run;
  run.concurrency = 3;
  run.num_requests = 3;
  run.max_run_time = absl::Milliseconds(500);
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  hook.Release();
  EXPECT_EQ(result->num_cancelled_by_bench, 3);
  ASSERT_EQ(result->records.size(), 3u);
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.cancelled_by_bench)
        << r.error_code << ": " << r.error_message;
    EXPECT_FALSE(r.success);
  }
  // The daemon carries on.
  auto after = RunPhase(*runner, *workload, 1, 1);
  ASSERT_EQ(after.records.size(), 1u);
  EXPECT_TRUE(after.records[0].success) << after.records[0].error_message;
}

TEST(BenchHttpOptionsTest, RefusesWhatHttpCannotDo) {
  LoadRunner::Options o;
  o.protocol = Protocol::kHttp;
  EXPECT_THAT(LoadRunner::Create(o).status().message(),
              HasSubstr("http_target"));
  o.http_target = "203.0.113.9:8000";
  EXPECT_EQ(LoadRunner::Create(o).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(bench::ParseProtocol("websocket").ok());
}

// The daemon serving HTTPS (and gRPC over TLS) with "server", signed by
// "ca" (tests/integration/pki.h).
class BenchHttpsTest : public strata::testing::PkiTest {
 protected:
  // `client_ca`: --tls_client_ca, so the daemon requires a client
  // certificate ("client" passes Start's gRPC check).
  void StartDaemon(bool client_ca = false) {
    http_port_ = strata::testing::FreePort();
    std::vector<std::string> flags = {absl::StrCat("--http_port=", http_port_),
                                      "--tls_cert=" + pki_.Path("server.pem"),
                                      "--tls_key=" + pki_.Path("server.key")};
    if (client_ca) flags.push_back("--tls_client_ca=" + pki_.Path("ca.pem"));
    auto daemon = StratadDaemon::Start(
        RecursiveTinyDir(), flags,
        GrpcTlsCredentials(pki_, "ca", client_ca ? "client" : ""));
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
  }

  // An HTTP runner trusting `ca`, presenting `client`'s certificate when
  // set; stops only when the run is done (every failure is recorded).
  std::unique_ptr<LoadRunner> Runner(const std::string& ca,
                                     const std::string& client = "",
                                     const std::string& server_name = "") {
    LoadRunner::Options options;
    options.target = daemon_->address();
    options.protocol = Protocol::kHttp;
    options.http_target = absl::StrCat("127.0.0.1:", http_port_);
    options.abort_after_consecutive_errors = 0;
    options.tls = {
        .ca_file = pki_.Path(ca + ".pem"),
        .cert_file = client.empty() ? "" : pki_.Path(client + ".pem"),
        .key_file = client.empty() ? "" : pki_.Path(client + ".key"),
        .server_name = server_name};
    auto runner = LoadRunner::Create(options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? *std::move(runner) : nullptr;
  }

  // Every one of `result`'s requests failed in the transport with a
  // message that contains each of `words`.
  static void ExpectAllFailed(const LoadRunner::RunResult& result,
                              size_t requests,
                              const std::vector<std::string>& words) {
    EXPECT_FALSE(result.aborted) << result.abort_reason;
    ASSERT_EQ(result.records.size(), requests);
    for (const RequestRecord& r : result.records) {
      EXPECT_FALSE(r.success);
      EXPECT_FALSE(r.cancelled_by_bench);
      EXPECT_EQ(r.error_code, "UNAVAILABLE") << r.error_message;
      for (const std::string& word : words) {
        EXPECT_THAT(r.error_message, HasSubstr(word));
      }
      EXPECT_EQ(r.output_tokens, 0);
    }
  }

  int http_port_ = 0;
  std::unique_ptr<StratadDaemon> daemon_;
};

TEST_F(BenchHttpsTest, StreamsOverHttpsWithTheTlsFlags) {
  StartDaemon();
  auto runner = Runner("ca");
  ASSERT_NE(runner, nullptr);
  // The same TLS options reach the gRPC port (model information).
  ASSERT_TRUE(runner->GetModelInfo().ok());
  auto workload = TokenWorkload(24, 9);
  const LoadRunner::RunResult result = RunPhase(*runner, *workload, 8, 4);
  EXPECT_FALSE(result.aborted) << result.abort_reason;
  ASSERT_EQ(result.records.size(), 8u);
  for (const RequestRecord& r : result.records) {
    EXPECT_TRUE(r.success) << r.error_code << ": " << r.error_message;
    EXPECT_EQ(r.prompt_tokens, 24);
    EXPECT_EQ(r.output_tokens, 9);
    EXPECT_GT(r.ttft_s, 0);
    EXPECT_LE(r.ttft_s, r.e2el_s);
  }
}

TEST_F(BenchHttpsTest, AServerTheBenchCannotVerifyFailsEveryRequest) {
  StartDaemon();
  auto workload = TokenWorkload(8, 4);
  {
    SCOPED_TRACE("a CA that did not sign the server's certificate");
    auto runner = Runner("rogue-ca");
    ASSERT_NE(runner, nullptr);
    ExpectAllFailed(RunPhase(*runner, *workload, 4, 2), 4,
                    {"handshaking: TLS: certificate verify failed",
                     "unable to get local issuer certificate"});
  }
  {
    SCOPED_TRACE("a name the server's certificate does not carry");
    auto runner = Runner("ca", "", "stratad.internal");
    ASSERT_NE(runner, nullptr);
    ExpectAllFailed(
        RunPhase(*runner, *workload, 2, 1), 2,
        {"handshaking: TLS: certificate verify failed", "hostname mismatch"});
  }
  // The daemon carries on, and so does a bench that trusts it.
  EXPECT_TRUE(daemon_->Alive());
  auto runner = Runner("ca");
  ASSERT_NE(runner, nullptr);
  const LoadRunner::RunResult after = RunPhase(*runner, *workload, 1, 1);
  ASSERT_EQ(after.records.size(), 1u);
  EXPECT_TRUE(after.records[0].success) << after.records[0].error_message;
}

TEST_F(BenchHttpsTest, MutualTlsPresentsTheClientCertificate) {
  StartDaemon(/*client_ca=*/true);
  auto workload = TokenWorkload(8, 4);
  auto runner = Runner("ca", "client");
  ASSERT_NE(runner, nullptr);
  const LoadRunner::RunResult result = RunPhase(*runner, *workload, 3, 3);
  ASSERT_EQ(result.records.size(), 3u);
  for (const RequestRecord& r : result.records) {
    EXPECT_TRUE(r.success) << r.error_code << ": " << r.error_message;
    EXPECT_EQ(r.output_tokens, 4);
  }
  // Without a certificate the daemon refuses the connection: with TLS 1.3
  // the bench learns it after its side of the handshake, still as TLS.
  auto anonymous = Runner("ca");
  ASSERT_NE(anonymous, nullptr);
  ExpectAllFailed(RunPhase(*anonymous, *workload, 2, 1), 2,
                  {"TLS: ", "certificate required"});
}

// Checked at Create, naming the flag, not at the first handshake.
TEST(BenchHttpOptionsTest, RefusesUnusableTlsFiles) {
  LoadRunner::Options o;
  o.protocol = Protocol::kHttp;
  o.http_target = "127.0.0.1:8000";
  // Missing, and present but not PEM (gRPC reads it; OpenSSL refuses it).
  const std::string not_pem = ::testing::TempDir() + "/bench_not_a_ca.pem";
  ASSERT_TRUE(std::ofstream(not_pem) << "not a certificate\n");
  for (const std::string& ca : {std::string("/nonexistent/ca.pem"), not_pem}) {
    SCOPED_TRACE(ca);
    o.tls.ca_file = ca;
    const absl::Status status = LoadRunner::Create(o).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("tls_ca"));
  }
}

}  // namespace
}  // namespace strata
