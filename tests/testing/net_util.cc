#include "tests/testing/net_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata::testing {
namespace {

// The reserved range's floor: well above the well-known ports and the
// usual fixed ones (8000, 9090), so a daemon started by hand is not hit.
constexpr int kLowestPort = 20000;

// The first port of the kernel's ephemeral range (32768 on Linux unless
// configured): FreePort stays below it.
int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  int high = 0;
  if (in >> low >> high && low > kLowestPort + 1000) return low;
  return 32768;
}

// Binds 127.0.0.1:port without SO_REUSEADDR, so that a port still in use
// by anyone (or lingering in TIME_WAIT) counts as taken.
bool Bindable(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok =
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

int FreePort() {
  // One directory per user, so that another user's leftovers cannot block
  // it; the shell helper uses the same path.
  const std::string dir = absl::StrCat("/tmp/strata-test-ports-", getuid());
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return -1;
  const int high = EphemeralLow();
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> pick(kLowestPort, high - 1);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = pick(rng);
    const std::string path = absl::StrCat(dir, "/", port);
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    // flock locks belong to the open file, so a second FreePort in this
    // process conflicts with the first as another process would.
    if (flock(fd, LOCK_EX | LOCK_NB) == 0 && Bindable(port)) {
      // The descriptor stays open on purpose: the lock is this process's
      // claim on the port, and the kernel drops it when the process exits,
      // however it exits.
      return port;
    }
    close(fd);
  }
  return -1;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n =
          send(fd, request.data() + sent, request.size() - sent, 0);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
      response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return response;
}

std::string HttpBody(const std::string& response) {
  const size_t pos = response.find("\r\n\r\n");
  return pos == std::string::npos ? "" : response.substr(pos + 4);
}

double PrometheusValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > series.size() && line.substr(0, series.size()) == series &&
        line[series.size()] == ' ') {
      return std::strtod(std::string(line.substr(series.size() + 1)).c_str(),
                         nullptr);
    }
  }
  return -1;
}

double ScrapeMetric(int port, const std::string& series) {
  return PrometheusValue(HttpBody(HttpGet(port, "/metrics")), series);
}

}  // namespace strata::testing
