// FreePort's claim on a port (tests/testing/net_util.h): the port is free,
// lies below the kernel's ephemeral range, and stays locked against other
// test processes, including the shell tests' helper, while this one lives.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/net_util.h"

namespace strata::testing {
namespace {

std::string LockPath(int port) {
  return absl::StrCat("/tmp/strata-test-ports-", getuid(), "/", port);
}

TEST(FreePortTest, APortIsFreeAndBelowTheEphemeralRange) {
  const int port = FreePort();
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  int high = 0;
  ASSERT_TRUE(in >> low >> high);
  EXPECT_GE(port, 20000);
  EXPECT_LT(port, low);
  // Nobody listens on it: a server can take it.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << "port " << port << ": " << strerror(errno);
  EXPECT_EQ(listen(fd, 1), 0);
  close(fd);
}

TEST(FreePortTest, AClaimedPortIsLockedAgainstEveryoneElse) {
  const int first = FreePort();
  const int second = FreePort();
  ASSERT_GT(first, 0);
  ASSERT_GT(second, 0);
  EXPECT_NE(first, second);
  // Another open of the lock file (as another process would) cannot lock it.
  const int fd = open(LockPath(first).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << LockPath(first);
  EXPECT_NE(flock(fd, LOCK_EX | LOCK_NB), 0);
  EXPECT_EQ(errno, EWOULDBLOCK);
  close(fd);
  // Nor can flock(1), which the shell tests' helper locks with.
  EXPECT_NE(
      std::system(absl::StrCat("flock -n ", LockPath(second), " true").c_str()),
      0);
}

TEST(FreePortTest, TheShellHelperClaimsAPortTheSameWay) {
  // The helper's shell holds its lock while it runs: a second lock on the
  // port it picked, taken from inside that shell, fails.
  const std::string script = absl::StrCat(
      "source ", STRATA_SOURCE_DIR, "/tests/testing/free_port.sh && ",
      "strata_free_port p && [ \"$p\" -ge 20000 ] && ",
      "! flock -n /tmp/strata-test-ports-$(id -u)/$p true");
  EXPECT_EQ(std::system(absl::StrCat("bash -c '", script, "'").c_str()), 0);
}

}  // namespace
}  // namespace strata::testing
