// HTTPS on stratad's HTTP API port, against the real daemon: with
// --tls_cert/--tls_key the port that --http_port opens speaks TLS only, with
// the gRPC port's certificate, client CA and SIGHUP reload. A CA and
// certificates are made at run time (tests/integration/pki.h); the client is
// Beast's, over OpenSSL (tests/integration/https_client.h).
#include <signal.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/https_client.h"
#include "tests/integration/pki.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

namespace beast = boost::beast;
namespace fs = std::filesystem;
namespace http = beast::http;
using strata::testing::AwaitMetric;
using strata::testing::GrpcTlsCredentials;
using strata::testing::HttpsClient;
using strata::testing::StallHook;
using strata::testing::StratadDaemon;

constexpr char kHandshakeFailures[] =
    "strata_http_tls_handshake_failures_total";

class HttpTlsTest : public strata::testing::PkiTest {
 protected:
  // A daemon with the HTTP API and metrics on free ports, TLS from
  // `tls_flags`; the gRPC check of Start trusts "ca" (with "client"'s
  // certificate when `client` is set).
  void StartDaemon(std::vector<std::string> tls_flags,
                   const std::string& client = "") {
    http_port_ = strata::testing::FreePort();
    metrics_port_ = strata::testing::FreePort();
    tls_flags.push_back(absl::StrCat("--http_port=", http_port_));
    tls_flags.push_back(absl::StrCat("--metrics_port=", metrics_port_));
    auto daemon =
        StratadDaemon::Start(strata::testing::TinyLlamaDir(), tls_flags,
                             GrpcTlsCredentials(pki_, "ca", client));
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
  }

  // A connected client trusting "ca", presenting `client`'s certificate
  // when set.
  std::unique_ptr<HttpsClient> Connect(const std::string& client = "") {
    auto https = std::make_unique<HttpsClient>(
        http_port_, pki_.Path("ca.pem"),
        client.empty() ? "" : pki_.Path(client + ".pem"),
        client.empty() ? "" : pki_.Path(client + ".key"));
    const beast::error_code ec = https->Connect();
    EXPECT_FALSE(ec) << ec.message();
    return https;
  }

  // GET /v1/models on a new connection: its HTTP status, 0 when the
  // connection failed (handshake refused, before or after it finished).
  int Models(const std::string& ca, const std::string& client = "") {
    HttpsClient https(http_port_, pki_.Path(ca + ".pem"),
                      client.empty() ? "" : pki_.Path(client + ".pem"),
                      client.empty() ? "" : pki_.Path(client + ".key"));
    if (https.Connect()) return 0;
    absl::StatusOr<HttpsClient::Response> response =
        https.Send(http::verb::get, "/v1/models");
    return response.ok() ? static_cast<int>(response->result_int()) : 0;
  }

  int http_port_ = 0;
  int metrics_port_ = 0;
  std::unique_ptr<StratadDaemon> daemon_;
};

// What a plaintext TCP client gets for `request` ("" = it sends nothing):
// the bytes before the server closed, and whether it did close (within 20 s).
struct PlainExchange {
  std::string received;
  bool closed_by_server = false;
};
PlainExchange SendPlaintext(int port, const std::string& request) {
  boost::asio::io_context io;
  beast::tcp_stream stream(io);
  PlainExchange exchange;
  beast::error_code ec;
  stream.connect(
      boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                     static_cast<uint16_t>(port)),
      ec);
  if (ec) return exchange;
  if (!request.empty()) {
    boost::asio::write(stream.socket(), boost::asio::buffer(request), ec);
  }
  char buffer[4096];
  stream.expires_after(std::chrono::seconds(20));
  std::function<void(beast::error_code, size_t)> on_read =
      [&](beast::error_code read_ec, size_t n) {
        exchange.received.append(buffer, n);
        if (!read_ec) {
          stream.async_read_some(boost::asio::buffer(buffer), on_read);
          return;
        }
        exchange.closed_by_server = read_ec != beast::error::timeout;
      };
  stream.async_read_some(boost::asio::buffer(buffer), on_read);
  io.run();
  return exchange;
}

// (a) HTTPS with the test CA trusted; (b) plaintext HTTP, a client that
// says nothing and a client that does not trust the certificate all fail
// their handshake, are counted, are not logged at ERROR, and the daemon
// keeps serving.
TEST_F(HttpTlsTest, HttpsServesAndPlaintextFailsTheHandshake) {
  StartDaemon({"--tls_cert=" + pki_.Path("server.pem"),
               "--tls_key=" + pki_.Path("server.key"),
               "--http_request_timeout=1s"});
  std::unique_ptr<HttpsClient> https = Connect();
  EXPECT_EQ(https->PeerCertificatePem(), pki_.Read("server.pem"));
  absl::StatusOr<HttpsClient::Response> models =
      https->Send(http::verb::get, "/v1/models");
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->result_int(), 200u) << models->body();
  // A generation on the same (kept-alive) connection.
  absl::StatusOr<HttpsClient::Response> completion =
      https->Send(http::verb::post, "/v1/completions",
                  R"({"prompt": "Hello", "max_tokens": 4, "temperature": 0,
          "ignore_eos": true})");
  ASSERT_TRUE(completion.ok()) << completion.status();
  ASSERT_EQ(completion->result_int(), 200u) << completion->body();
  EXPECT_EQ(
      nlohmann::json::parse(completion->body())["usage"]["completion_tokens"],
      4);

  // Plaintext HTTP on the TLS port: no HTTP answer, the connection closed.
  const PlainExchange plaintext = SendPlaintext(
      http_port_, "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_TRUE(plaintext.closed_by_server);
  EXPECT_FALSE(absl::StrContains(plaintext.received, "HTTP/1.1"))
      << plaintext.received;
  EXPECT_TRUE(AwaitMetric(metrics_port_, kHandshakeFailures, 1));
  // A client that connects and sends nothing is dropped at
  // --http_request_timeout (1 s here), well before the client's 20 s.
  const PlainExchange silent = SendPlaintext(http_port_, "");
  EXPECT_TRUE(silent.closed_by_server);
  EXPECT_TRUE(AwaitMetric(metrics_port_, kHandshakeFailures, 2));
  // A client that does not trust the server's CA gives up in the handshake.
  EXPECT_EQ(Models("rogue-ca"), 0);
  EXPECT_TRUE(AwaitMetric(metrics_port_, kHandshakeFailures, 3));

  // Still serving. (The first connection is gone: it was idle longer than
  // --http_request_timeout.)
  EXPECT_EQ(Models("ca"), 200);
  EXPECT_TRUE(daemon_->Alive());
  // Client mistakes are counted, never logged at ERROR by the HTTP server.
  for (absl::string_view line :
       absl::StrSplit(daemon_->process().ReadStderr(), '\n')) {
    EXPECT_FALSE(absl::StartsWith(line, "E") &&
                 absl::StrContains(line, "http_"))
        << line;
  }
}

// (c) With --tls_client_ca, only clients with a certificate that CA signed
// get an answer.
TEST_F(HttpTlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  StartDaemon({"--tls_cert=" + pki_.Path("server.pem"),
               "--tls_key=" + pki_.Path("server.key"),
               "--tls_client_ca=" + pki_.Path("ca.pem")},
              "client");
  EXPECT_EQ(Models("ca", "client"), 200);
  EXPECT_EQ(Models("ca"), 0);
  EXPECT_EQ(Models("ca", "rogue-client"), 0);
  EXPECT_TRUE(AwaitMetric(metrics_port_, kHandshakeFailures, 2));
  EXPECT_EQ(Models("ca", "client"), 200);
  EXPECT_TRUE(daemon_->Alive());
}

// The session watches a TLS connection as it does a plaintext one (through
// TLS, http_session.h): a client that closes it mid-stream cancels the
// generation. The engine is held, so the stream is still open at the close.
TEST_F(HttpTlsTest, ClosingTheConnectionCancelsTheStream) {
  StallHook hook;
  StartDaemon({"--tls_cert=" + pki_.Path("server.pem"),
               "--tls_key=" + pki_.Path("server.key")});
  std::unique_ptr<HttpsClient> https = Connect();
  hook.Stall();
  absl::StatusOr<int> status =
      https->Start(http::verb::post, "/v1/completions",
                   R"({"prompt": "Hello", "max_tokens": 64, "stream": true})");
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(*status, 200);
  ASSERT_TRUE(AwaitMetric(metrics_port_, "strata_http_responses_open", 1));
  https.reset();  // closes the TCP connection (no close_notify)
  ASSERT_TRUE(AwaitMetric(metrics_port_, "strata_http_responses_open", 0));
  hook.Release();
  EXPECT_TRUE(AwaitMetric(metrics_port_,
                          "strata_requests_total{outcome=\"cancelled\"}", 1));
  EXPECT_TRUE(daemon_->Alive());
}

// (d) SIGHUP swaps the certificate for new connections while a streaming
// response begun before it runs to its end on its connection, which then
// keeps serving. The stream cannot finish early: the engine is held (the
// stall hook) from before the request until after the reload.
TEST_F(HttpTlsTest, SighupSwapsTheCertificateWhileAStreamContinues) {
  StallHook hook;  // the daemon inherits the variable at start
  const fs::path live = pki_.Path("live");
  fs::create_directories(live);
  fs::copy_file(pki_.Path("server.pem"), live / "cert.pem");
  fs::copy_file(pki_.Path("server.key"), live / "key.pem");
  StartDaemon({"--tls_cert=" + (live / "cert.pem").string(),
               "--tls_key=" + (live / "key.pem").string()});

  std::unique_ptr<HttpsClient> old_connection = Connect();
  ASSERT_EQ(old_connection->PeerCertificatePem(), pki_.Read("server.pem"));
  hook.Stall();
  constexpr int kMaxTokens = 24;
  absl::StatusOr<int> status = old_connection->Start(
      http::verb::post, "/v1/completions",
      nlohmann::json{{"prompt", "Once upon a time"},
                     {"max_tokens", kMaxTokens},
                     {"temperature", 0},
                     {"ignore_eos", true},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}}
          .dump());
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(*status, 200);
  // The response has begun (status and headers are out) and waits for the
  // engine.
  ASSERT_TRUE(AwaitMetric(metrics_port_, "strata_http_responses_open", 1));

  fs::copy_file(pki_.Path("server2.pem"), live / "cert.pem",
                fs::copy_options::overwrite_existing);
  fs::copy_file(pki_.Path("server2.key"), live / "key.pem",
                fs::copy_options::overwrite_existing);
  ASSERT_EQ(kill(daemon_->process().pid(), SIGHUP), 0);
  // The daemon takes the signal on its main thread; new handshakes present
  // the new certificate once it has.
  std::string peer;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (peer != pki_.Read("server2.pem") && absl::Now() < give_up) {
    std::unique_ptr<HttpsClient> https = Connect();
    peer = https->PeerCertificatePem();
    if (peer != pki_.Read("server2.pem")) {
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  ASSERT_EQ(peer, pki_.Read("server2.pem"));
  EXPECT_EQ(Models("ca"), 200);
  EXPECT_FALSE(old_connection->done());

  // The stream, on the old certificate's session, runs to its end.
  hook.Release();
  while (!old_connection->done()) {
    const absl::Status read = old_connection->ReadSome();
    ASSERT_TRUE(read.ok()) << read << " after: " << old_connection->body();
  }
  const std::string& body = old_connection->body();
  ASSERT_TRUE(absl::EndsWith(body, "data: [DONE]\n\n")) << body;
  int completion_tokens = -1;
  for (absl::string_view event : absl::StrSplit(body, "\n\n")) {
    if (!absl::ConsumePrefix(&event, "data: {")) continue;
    const nlohmann::json chunk =
        nlohmann::json::parse(absl::StrCat("{", event));
    if (chunk.contains("usage") && !chunk["usage"].is_null()) {
      completion_tokens = chunk["usage"]["completion_tokens"].get<int>();
    }
  }
  EXPECT_EQ(completion_tokens, kMaxTokens) << body;
  // The old connection keeps serving.
  absl::StatusOr<HttpsClient::Response> models =
      old_connection->Send(http::verb::get, "/v1/models");
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->result_int(), 200u);
  EXPECT_EQ(old_connection->PeerCertificatePem(), pki_.Read("server.pem"));

  // A broken reload (the key of another certificate) keeps the current one
  // on this port too.
  fs::copy_file(pki_.Path("server.key"), live / "key.pem",
                fs::copy_options::overwrite_existing);
  ASSERT_EQ(kill(daemon_->process().pid(), SIGHUP), 0);
  const absl::Time logged_by = absl::Now() + absl::Seconds(10);
  while (!absl::StrContains(daemon_->process().ReadStderr(),
                            "TLS reload failed") &&
         absl::Now() < logged_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(
      absl::StrContains(daemon_->process().ReadStderr(), "TLS reload failed"));
  EXPECT_EQ(Connect()->PeerCertificatePem(), pki_.Read("server2.pem"));
  EXPECT_TRUE(daemon_->Alive());
}

}  // namespace
}  // namespace strata
