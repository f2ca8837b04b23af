#include "engine/rope_table.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(RopeTableTest, HoldsCosThenSinPerPosition) {
  const std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f};
  std::vector<float> table(5 * 6);
  BuildRopeTable(inv_freq, 5, table.data());
  for (int p = 0; p < 5; ++p) {
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(table[p * 6 + i], std::cos(p * double{inv_freq[i]}), 1e-6);
      EXPECT_NEAR(table[p * 6 + 3 + i], std::sin(p * double{inv_freq[i]}),
                  1e-6);
    }
  }
}

}  // namespace
}  // namespace strata
