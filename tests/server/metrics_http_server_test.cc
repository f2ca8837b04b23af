#include "server/metrics_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::HttpGet;

std::unique_ptr<MetricsHttpServer> StartServer() {
  auto server = MetricsHttpServer::Start("127.0.0.1", 0,
                                         [] { return std::string("up 1\n"); });
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// True once the server has closed its end (EOF or reset is readable).
bool ClosedByServer(int fd) {
  pollfd pfd{fd, POLLIN, 0};
  return poll(&pfd, 1, 0) > 0;
}

// Ten silent connections once held scrapes for 19.9 s: one thread served
// them one after another. A scrape must be answered while they still wait.
TEST(MetricsHttpServerTest, SilentClientsDoNotHoldAScrape) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  std::vector<int> silent;
  for (int i = 0; i < 10; ++i) silent.push_back(Connect(server->port()));
  // All ten are accepted and held by the server before the scrape connects.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (server->num_serving() < 10 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(server->num_serving(), 10);
  const std::string response = HttpGet(server->port(), "/metrics");
  EXPECT_NE(response.find("up 1"), std::string::npos) << response;
  int closed = 0;
  for (int fd : silent) closed += ClosedByServer(fd) ? 1 : 0;
  // None of them had to time out for the scrape to be served.
  EXPECT_EQ(closed, 0);
  for (int fd : silent) close(fd);
}

// A client sending a byte now and then once kept the connection for as long
// as it liked (the timeout was per read): the whole request is bounded.
TEST(MetricsHttpServerTest, ATricklingClientIsCutOffAtTheRequestTimeout) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const int fd = Connect(server->port());
  const std::string request = "GET /metrics HTTP/1.1\r\nX-Slow: ";
  const absl::Time start = absl::Now();
  bool cut_off = false;
  // A byte every 200 ms: each read is quick, the request never ends.
  for (int i = 0; i < 40 && !cut_off; ++i) {
    const char byte = request[static_cast<size_t>(i) % request.size()];
    send(fd, &byte, 1, MSG_NOSIGNAL);
    absl::SleepFor(absl::Milliseconds(200));
    cut_off = ClosedByServer(fd);
  }
  EXPECT_TRUE(cut_off) << "still open after "
                       << absl::FormatDuration(absl::Now() - start);
  close(fd);
}

}  // namespace
}  // namespace strata
