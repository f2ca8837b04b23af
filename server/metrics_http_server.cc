#include "server/metrics_http_server.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/thread_name.h"

namespace strata {
namespace {

// A scrape request is a few hundred bytes; anything longer is not one.
constexpr size_t kMaxRequestBytes = 8192;

// Milliseconds left until `deadline` (0 once passed).
int MillisLeft(absl::Time deadline) {
  return static_cast<int>(std::max<int64_t>(
      0, absl::ToInt64Milliseconds(deadline - absl::Now())));
}

std::string Response(const std::string& status, const std::string& type,
                     const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

// Sends until done or `deadline` (a client that does not read cannot hold
// the connection past it).
void SendAll(int fd, const std::string& data, absl::Time deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    pollfd pfd{fd, POLLOUT, 0};
    const int wait = MillisLeft(deadline);
    if (wait == 0 || poll(&pfd, 1, wait) <= 0) return;
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> render) {
  std::string bare_host = host;
  if (bare_host.size() >= 2 && bare_host.front() == '[' &&
      bare_host.back() == ']') {
    bare_host = bare_host.substr(1, bare_host.size() - 2);
  }
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc =
          getaddrinfo(bare_host.empty() ? nullptr : bare_host.c_str(),
                      service.c_str(), &hints, &addrs);
      rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot resolve metrics address ", where, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string error = "no address";
  for (addrinfo* a = addrs; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0) break;
    error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(addrs);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", where, ": ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  int bound_port = port;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    bound_port = bound.ss_family == AF_INET6
                     ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                     : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(fd, bound_port, std::move(render)));
  server->thread_ = std::thread([raw = server.get()] { raw->Run(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int port,
                                     std::function<std::string()> render)
    : listen_fd_(listen_fd), port_(port), render_(std::move(render)) {}

MetricsHttpServer::~MetricsHttpServer() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  // Connection threads end by their request's deadline.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* serving) { return *serving == 0; }, &num_serving_));
  close(listen_fd_);
}

void MetricsHttpServer::Run() {
  SetCurrentThreadName(kMetricsThreadName);
  while (!stop_.load()) {
    // Wake up regularly to notice stop_.
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    {
      absl::MutexLock lock(&mu_);
      if (num_serving_ >= kMaxConnections) {
        close(fd);  // the scraper retries at its next interval
        continue;
      }
      ++num_serving_;
    }
    std::thread([this, fd] {
      Serve(fd);
      close(fd);
      absl::MutexLock lock(&mu_);
      --num_serving_;
    }).detach();
  }
}

void MetricsHttpServer::Serve(int fd) {
  const absl::Time deadline =
      absl::Now() + absl::Milliseconds(kRequestTimeoutMs);
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos &&
         request.size() < kMaxRequestBytes) {
    pollfd pfd{fd, POLLIN, 0};
    const int wait = MillisLeft(deadline);
    if (wait == 0 || poll(&pfd, 1, wait) <= 0) return;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  const size_t line_end = request.find_first_of("\r\n");
  const std::string line = request.substr(0, line_end);
  if (absl::StartsWith(line, "GET /metrics ") || line == "GET /metrics" ||
      absl::StartsWith(line, "GET /metrics?")) {
    SendAll(fd,
            Response("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                     render_()),
            deadline);
  } else if (absl::StartsWith(line, "GET ")) {
    SendAll(fd,
            Response("404 Not Found", "text/plain",
                     "not found; metrics are at /metrics\n"),
            deadline);
  } else {
    SendAll(fd,
            Response("405 Method Not Allowed", "text/plain",
                     "only GET /metrics is served\n"),
            deadline);
  }
}

}  // namespace strata
