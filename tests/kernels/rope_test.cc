#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/rope_table.h"
#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/thread_pool.h"

namespace strata::cpu {
namespace {

class RopeTest : public testing::TestWithParam<Isa> {};

// rotate_half layout: element i pairs with i + head_dim/2.
TEST_P(RopeTest, RotatesHalvesAtEachRowsPosition) {
  ThreadPool pool(2);
  const KernelContext ctx{GetParam(), &pool};
  const int64_t head_dim = 24, heads = 3, max_pos = 50, half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / head_dim));
  }
  std::vector<float> table(max_pos * head_dim);
  BuildRopeTable(inv_freq, max_pos, table.data());
  const std::vector<int32_t> positions = {0, 1, 49, 17, 17, 3,  30, 2,  5, 6,
                                          7, 8, 9,  10, 11, 12, 13, 14, 15};
  const int64_t n = static_cast<int64_t>(positions.size());
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(n * heads * head_dim);
  for (float& v : x) v = dist(rng);
  std::vector<float> out = x;
  ApplyRope(ctx, table.data(), positions, heads, head_dim, out.data());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* in = x.data() + (r * heads + h) * head_dim;
      const float* got = out.data() + (r * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = positions[r] * double{inv_freq[i]};
        const double c = std::cos(angle), s = std::sin(angle);
        ASSERT_NEAR(got[i], in[i] * c - in[i + half] * s, 1e-5);
        ASSERT_NEAR(got[i + half], in[i + half] * c + in[i] * s, 1e-5);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, RopeTest, testing::ValuesIn(SupportedIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });

}  // namespace
}  // namespace strata::cpu
