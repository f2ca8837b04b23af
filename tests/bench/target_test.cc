#include "bench/target.h"

#include "gtest/gtest.h"

namespace strata::bench {
namespace {

TEST(TargetTest, LoopbackTargets) {
  for (const char* target :
       {"127.0.0.1:50051", "localhost:50051", "LOCALHOST:1", "127.1.2.3:80",
        "[::1]:50051", "::1", "ipv4:127.0.0.1:5", "ipv6:[::1]:5",
        "dns:///localhost:50051", "dns:localhost:1", "unix:/tmp/strata.sock",
        "unix-abstract:strata", "ipv4:127.0.0.1:5,127.0.0.2:6",
        "[::ffff:127.0.0.1]:9"}) {
    EXPECT_TRUE(IsLoopbackTarget(target)) << target;
    EXPECT_TRUE(CheckTarget(target, false).ok()) << target;
  }
}

TEST(TargetTest, RemoteTargetsNeedTheFlag) {
  for (const char* target :
       {"10.0.0.1:50051", "example.com:443", "0.0.0.0:50051", "128.0.0.1:1",
        "[2001:db8::1]:50051", "dns://8.8.8.8/localhost:1",
        "ipv4:127.0.0.1:5,10.0.0.1:6", "127.0.0:1", "localhost.example.com:1",
        "1270.0.0.1:5", ""}) {
    EXPECT_FALSE(IsLoopbackTarget(target)) << target;
    const absl::Status s = CheckTarget(target, false);
    EXPECT_FALSE(s.ok()) << target;
  }
  const absl::Status denied = CheckTarget("10.0.0.1:50051", false);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(denied.message().find("--allow_remote_target"), std::string::npos);
  EXPECT_TRUE(CheckTarget("10.0.0.1:50051", true).ok());
  EXPECT_FALSE(CheckTarget("", true).ok());
}

}  // namespace
}  // namespace strata::bench
