// A client that closes its socket mid-stream on the HTTP API cancels its
// generation before the engine's next step, as a gRPC cancel does, and the
// gauges return to zero. The condition is built, not hoped for: the engine
// is held between steps (the stall hook, confirmed by its parked marker)
// while the socket closes, so the test can see that no step ran after it.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using strata::testing::AwaitMetric;
using strata::testing::StallHook;
using strata::testing::StratadDaemon;
using tcp = boost::asio::ip::tcp;

double Metric(int port, const std::string& series) {
  return strata::testing::ScrapeMetric(port, series);
}

TEST(HttpCancelTest, ClosedSocketCancelsBeforeTheNextEngineStep) {
  StallHook hook;  // the daemon inherits the variable at start
  const int http_port = strata::testing::FreePort();
  const int metrics_port = strata::testing::FreePort();
  auto daemon = StratadDaemon::Start(
      std::string(STRATA_SOURCE_DIR) + "/models/strata-recursive-tiny",
      {absl::StrCat("--http_port=", http_port),
       absl::StrCat("--metrics_port=", metrics_port), "--stall_timeout=1s"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();

  // A raw streaming request, so that closing the socket is all the client
  // does (no SDK that might send anything on abort).
  boost::asio::io_context io;
  tcp::socket socket(io);
  boost::asio::connect(socket, tcp::resolver(io).resolve(
                                   "127.0.0.1", std::to_string(http_port)));
  const std::string body = nlohmann::json{{"prompt", "In the beginning"},
                                          {"max_tokens", 400},
                                          {"ignore_eos", true},
                                          {"stream", true}}
                               .dump();
  const std::string request = absl::StrCat(
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: ",
      body.size(), "\r\n\r\n", body);
  boost::asio::write(socket, boost::asio::buffer(request));
  // Two tokens' events: the generation is running.
  std::string received;
  auto events = [&] {
    size_t count = 0;
    for (size_t at = received.find("data: {"); at != std::string::npos;
         at = received.find("data: {", at + 1)) {
      ++count;
    }
    return count;
  };
  while (events() < 2) {
    char buffer[4096];
    boost::system::error_code ec;
    const size_t n = socket.read_some(boost::asio::buffer(buffer), ec);
    ASSERT_FALSE(ec) << ec.message() << " after: " << received;
    received.append(buffer, n);
  }
  ASSERT_TRUE(absl::StartsWith(received, "HTTP/1.1 200")) << received;
  EXPECT_EQ(Metric(metrics_port, "strata_requests_running"), 1);

  // Hold the engine between two steps, and make sure it is held there (a
  // step still running when the hook is set would count after `steps`).
  hook.Stall();
  ASSERT_TRUE(hook.AwaitParked());
  const double steps = Metric(metrics_port, "strata_engine_steps_total");

  socket.close();
  // The daemon notices the close on its own (it watches the socket while it
  // streams) and cancels: the response is no longer open.
  ASSERT_TRUE(AwaitMetric(metrics_port, "strata_http_responses_open", 0));

  hook.Release();
  ASSERT_TRUE(AwaitMetric(metrics_port,
                          "strata_requests_total{outcome=\"cancelled\"}", 1));
  EXPECT_TRUE(AwaitMetric(metrics_port, "strata_requests_running", 0));
  EXPECT_EQ(Metric(metrics_port, "strata_requests_waiting"), 0);
  // Not one step ran for it after the close.
  EXPECT_EQ(Metric(metrics_port, "strata_engine_steps_total"), steps);
  // Idle again, the engine is no longer stalled.
  EXPECT_TRUE(AwaitMetric(metrics_port, "strata_engine_stalled", 0));
}

}  // namespace
}  // namespace strata
