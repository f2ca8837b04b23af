#include "scheduler/block_manager.h"

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(BlockManagerTest, AllocatesDistinctBlocksUntilDry) {
  BlockManager blocks(5);
  std::vector<int32_t> table;
  ASSERT_TRUE(blocks.Allocate(3, table));
  ASSERT_TRUE(blocks.Allocate(2, table));
  EXPECT_EQ(blocks.num_free(), 0);
  std::vector<int32_t> sorted = table;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  for (int32_t b : table) EXPECT_EQ(blocks.ref_count(b), 1);
}

TEST(BlockManagerTest, AllocateIsAllOrNothing) {
  BlockManager blocks(4);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(3, a));
  std::vector<int32_t> b;
  EXPECT_FALSE(blocks.Allocate(2, b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(blocks.num_free(), 1);
}

TEST(BlockManagerTest, FreeReturnsBlocksAndReusesNewestFirst) {
  BlockManager blocks(4);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(4, a));
  blocks.Free(std::span<const int32_t>(a).first(2));
  EXPECT_EQ(blocks.num_free(), 2);
  EXPECT_EQ(blocks.num_used(), 2);
  std::vector<int32_t> b;
  ASSERT_TRUE(blocks.Allocate(1, b));
  EXPECT_EQ(b[0], a[1]);  // the most recently freed block
}

TEST(BlockManagerDeathTest, DoubleFreeIsAnInvariantViolation) {
  BlockManager blocks(2);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(1, a));
  blocks.Free(a);
  EXPECT_DEATH(blocks.Free(a), "freed twice");
}

TEST(BlocksForTest, RoundsUp) {
  EXPECT_EQ(BlocksFor(0, 16), 0);
  EXPECT_EQ(BlocksFor(1, 16), 1);
  EXPECT_EQ(BlocksFor(16, 16), 1);
  EXPECT_EQ(BlocksFor(17, 16), 2);
}

}  // namespace
}  // namespace strata
