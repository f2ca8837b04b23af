#include "server/status_util.h"

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

// A client whose timer fires at its deadline cancels the call, and the
// cancel can reach the server just before the server's copy of the
// deadline: the call still ended because of its deadline.
TEST(CancellationStatusTest, ACancelAtTheDeadlineCountsAsTheDeadline) {
  const absl::Time deadline = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      CancellationStatus(deadline - absl::Milliseconds(3), deadline)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(CancellationStatus(deadline, deadline)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      CancellationStatus(deadline + absl::Seconds(1), deadline)));
}

TEST(CancellationStatusTest, AnEarlierCancelIsACancellation) {
  const absl::Time deadline = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(absl::IsCancelled(
      CancellationStatus(deadline - absl::Seconds(5), deadline)));
  EXPECT_TRUE(absl::IsCancelled(
      CancellationStatus(absl::Now(), absl::InfiniteFuture())));
}

// A stream's write that fails at the deadline (the write in flight fails
// before gRPC's OnCancel runs) is the deadline too; the soak counted 36 of
// 535 client deadlines as cancels before this path used the deadline test.
TEST(StreamWriteFailureStatusTest, AFailedWriteAtTheDeadlineIsTheDeadline) {
  const absl::Time deadline = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      StreamWriteFailureStatus(deadline - absl::Milliseconds(3), deadline)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      StreamWriteFailureStatus(deadline + absl::Seconds(1), deadline)));
}

TEST(StreamWriteFailureStatusTest, AnEarlierFailedWriteIsAClientThatLeft) {
  const absl::Time deadline = absl::FromUnixSeconds(1000);
  const absl::Status early =
      StreamWriteFailureStatus(deadline - absl::Seconds(5), deadline);
  EXPECT_TRUE(absl::IsCancelled(early));
  EXPECT_EQ(early.message(), "the client stopped reading");
  EXPECT_TRUE(absl::IsCancelled(
      StreamWriteFailureStatus(absl::Now(), absl::InfiniteFuture())));
}

}  // namespace
}  // namespace strata
