#include "bench/stats.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace strata::bench {
namespace {

TEST(PercentileTest, InterpolatesLinearlyLikeNumpy) {
  const std::vector<double> sorted = {1, 2, 3, 4};
  // numpy.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100])
  EXPECT_DOUBLE_EQ(Percentile(sorted, 0), 1.0);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 50), 2.5);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 99), 3.97);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 100), 4.0);
}

TEST(PercentileTest, EdgeCases) {
  EXPECT_EQ(Percentile({}, 50), 0.0);
  EXPECT_EQ(Percentile({7}, 0), 7.0);
  EXPECT_EQ(Percentile({7}, 99), 7.0);
  // Out-of-range percentiles clamp to the ends.
  EXPECT_EQ(Percentile({1, 9}, 150), 9.0);
  EXPECT_EQ(Percentile({1, 9}, -5), 1.0);
}

TEST(SummarizeTest, MeanStdAndPercentilesScaled) {
  // Unsorted on purpose; scale 1000 turns seconds into milliseconds.
  const Summary s = Summarize({0.004, 0.001, 0.003, 0.002}, 1000);
  EXPECT_NEAR(s.mean, 2.5, 1e-9);
  EXPECT_NEAR(s.std, std::sqrt(1.25), 1e-9);  // population std, as numpy
  EXPECT_NEAR(s.median, 2.5, 1e-9);
  EXPECT_NEAR(s.p50, 2.5, 1e-9);
  EXPECT_NEAR(s.p90, 3.7, 1e-9);
  EXPECT_NEAR(s.p99, 3.97, 1e-9);
}

TEST(SummarizeTest, EmptyIsAllZero) {
  const Summary s = Summarize({});
  EXPECT_EQ(s.mean, 0);
  EXPECT_EQ(s.std, 0);
  EXPECT_EQ(s.p99, 0);
}

}  // namespace
}  // namespace strata::bench
