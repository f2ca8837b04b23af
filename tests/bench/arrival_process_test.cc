#include "bench/arrival_process.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace strata::bench {
namespace {

// Inter-arrival gaps of `n` draws.
std::vector<double> Gaps(ArrivalProcess& process, int n) {
  std::vector<double> gaps;
  double previous = process.Next();
  EXPECT_EQ(previous, 0.0);  // the first request goes at once
  for (int i = 0; i < n; ++i) {
    const double t = process.Next();
    EXPECT_GE(t, previous);
    gaps.push_back(t - previous);
    previous = t;
  }
  return gaps;
}

void MeanAndCv(const std::vector<double>& gaps, double* mean, double* cv) {
  double sum = 0, squares = 0;
  for (double g : gaps) sum += g;
  *mean = sum / gaps.size();
  for (double g : gaps) squares += (g - *mean) * (g - *mean);
  *cv = std::sqrt(squares / gaps.size()) / *mean;
}

TEST(ArrivalProcessTest, PoissonGapsHaveMeanOneOverRate) {
  auto process = ArrivalProcess::Create({.request_rate = 50, .seed = 7});
  ASSERT_TRUE(process.ok()) << process.status();
  double mean = 0, cv = 0;
  MeanAndCv(Gaps(**process, 20000), &mean, &cv);
  // Exponential gaps: mean 1/rate and coefficient of variation 1. With
  // 20000 draws the standard error is under 1%; 5% leaves ample room.
  EXPECT_NEAR(mean, 1.0 / 50, 0.05 / 50);
  EXPECT_NEAR(cv, 1.0, 0.05);
}

TEST(ArrivalProcessTest, BurstinessSetsTheVariation) {
  // Gamma with shape k has CV 1/sqrt(k): k = 4 is twice as regular.
  auto regular =
      ArrivalProcess::Create({.request_rate = 10, .burstiness = 4, .seed = 1});
  ASSERT_TRUE(regular.ok());
  double mean = 0, cv = 0;
  MeanAndCv(Gaps(**regular, 20000), &mean, &cv);
  EXPECT_NEAR(mean, 0.1, 0.005);
  EXPECT_NEAR(cv, 0.5, 0.03);
}

TEST(ArrivalProcessTest, SameSeedSameArrivals) {
  auto a = ArrivalProcess::Create({.request_rate = 3, .seed = 42});
  auto b = ArrivalProcess::Create({.request_rate = 3, .seed = 42});
  auto c = ArrivalProcess::Create({.request_rate = 3, .seed = 43});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const double ta = (*a)->Next();
    EXPECT_EQ(ta, (*b)->Next());
    if (ta != (*c)->Next()) differs = true;
  }
  EXPECT_TRUE(differs);
}

TEST(ArrivalProcessTest, InfiniteRateSendsEverythingAtOnce) {
  auto process = ArrivalProcess::Create(
      {.request_rate = std::numeric_limits<double>::infinity()});
  ASSERT_TRUE(process.ok());
  for (int i = 0; i < 10; ++i) EXPECT_EQ((*process)->Next(), 0.0);
}

TEST(ArrivalProcessTest, RejectsBadOptions) {
  EXPECT_FALSE(ArrivalProcess::Create({.request_rate = 0}).ok());
  EXPECT_FALSE(ArrivalProcess::Create({.request_rate = -1}).ok());
  EXPECT_FALSE(ArrivalProcess::Create(
                   {.request_rate = std::numeric_limits<double>::quiet_NaN()})
                   .ok());
  EXPECT_FALSE(
      ArrivalProcess::Create({.request_rate = 1, .burstiness = 0}).ok());
}

}  // namespace
}  // namespace strata::bench
