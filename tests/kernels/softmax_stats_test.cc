// ComputeSoftmaxStats against a float64 softmax, on every ISA this CPU
// supports, and bit for bit across ISAs (the engine's exit decisions must
// not depend on the machine).
#include "kernels/cpu/softmax_stats.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"

namespace strata::cpu {
namespace {

std::vector<float> Logits(int64_t m, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(m));
  for (float& x : v) x = dist(rng);
  return v;
}

class SoftmaxStatsTest : public testing::TestWithParam<Isa> {};

TEST_P(SoftmaxStatsTest, MatchesFloat64AndEveryIsaBitForBit) {
  // Lengths around the 8- and 16-lane steps and a vocabulary; scales from
  // flat distributions to ones where most exponentials underflow.
  for (int64_t m : {1, 7, 15, 16, 17, 31, 33, 4112}) {
    for (float scale : {0.01f, 1.0f, 8.0f, 60.0f}) {
      const std::vector<float> x = Logits(m, static_cast<uint32_t>(m), scale);
      const SoftmaxStats got = ComputeSoftmaxStats(GetParam(), x.data(), m);
      double max = x[0];
      for (float v : x) max = std::max(max, static_cast<double>(v));
      double sum = 0.0;
      for (float v : x) sum += std::exp(static_cast<double>(v) - max);
      ASSERT_EQ(got.max, static_cast<float>(max)) << m << " " << scale;
      EXPECT_NEAR(got.sum_exp, sum, 2e-6 * sum) << m << " " << scale;
      const SoftmaxStats scalar =
          ComputeSoftmaxStats(Isa::kScalar, x.data(), m);
      EXPECT_EQ(0, std::memcmp(&got, &scalar, sizeof(got)))
          << m << " " << scale << ": " << got.sum_exp << " vs scalar "
          << scalar.sum_exp;
    }
  }
}

TEST_P(SoftmaxStatsTest, ExtremeValuesStayFinite) {
  // One dominant logit: every other term underflows; the sum is 1 (+ tiny).
  std::vector<float> x(100, -1e30f);
  x[42] = 5.0f;
  SoftmaxStats s = ComputeSoftmaxStats(GetParam(), x.data(), 100);
  EXPECT_EQ(s.max, 5.0f);
  EXPECT_NEAR(s.sum_exp, 1.0f, 1e-6f);
  // Ties: two equal maxima give a sum of 2.
  x[7] = 5.0f;
  s = ComputeSoftmaxStats(GetParam(), x.data(), 100);
  EXPECT_NEAR(s.sum_exp, 2.0f, 1e-6f);
}

INSTANTIATE_TEST_SUITE_P(Isas, SoftmaxStatsTest,
                         testing::ValuesIn(SupportedIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });

}  // namespace
}  // namespace strata::cpu
