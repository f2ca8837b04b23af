#include "scheduler/block_manager.h"

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(BlockManagerTest, AllocatesDistinctBlocksUntilDry) {
  BlockManager blocks(5, 4, true);
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
  BlockManager blocks(4, 4, true);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(3, a));
  std::vector<int32_t> b;
  EXPECT_FALSE(blocks.Allocate(2, b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(blocks.num_free(), 1);
}

TEST(BlockManagerTest, FreedUncachedBlocksAreReusedFirst) {
  BlockManager blocks(4, 4, true);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(4, a));
  blocks.Free(std::span<const int32_t>(a).first(2));
  EXPECT_EQ(blocks.num_free(), 2);
  EXPECT_EQ(blocks.num_used(), 2);
  std::vector<int32_t> b;
  ASSERT_TRUE(blocks.Allocate(1, b));
  EXPECT_EQ(b[0],
            a[0]);  // freed, uncached: handed out before never-used blocks
}

TEST(BlockManagerDeathTest, DoubleFreeIsAnInvariantViolation) {
  BlockManager blocks(2, 4, true);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.Allocate(1, a));
  blocks.Free(a);
  EXPECT_DEATH(blocks.Free(a), "freed twice");
}

TEST(BlockManagerTest, CachedPrefixIsSharedAndEvictedLeastRecentlyUsed) {
  BlockManager blocks(4, 2, true);
  const std::vector<TokenId> a = {1, 2, 3, 4, 5};
  std::vector<int32_t> table_a;
  ASSERT_TRUE(blocks.Allocate(3, table_a));
  uint64_t h = blocks.Register(table_a[0], 0, std::span(a).first(2));
  h = blocks.Register(table_a[1], h, std::span(a).subspan(2, 2));
  EXPECT_EQ(blocks.num_cached(), 2);

  // A running request shares the prefix: reference counts go to 2.
  std::vector<int32_t> table_b;
  uint64_t chain = 0;
  EXPECT_EQ(blocks.AcquireCachedPrefix(a, 2, table_b, &chain), 2);
  EXPECT_EQ(chain, h);
  EXPECT_EQ(table_b,
            std::vector<int32_t>(table_a.begin(), table_a.begin() + 2));
  EXPECT_EQ(blocks.ref_count(table_a[0]), 2);

  // A different first block misses at once, even with the same second block.
  const std::vector<TokenId> other = {9, 9, 3, 4};
  std::vector<int32_t> table_c;
  EXPECT_EQ(blocks.AcquireCachedPrefix(other, 2, table_c, &chain), 0);
  EXPECT_TRUE(table_c.empty());

  blocks.Free(table_a);
  blocks.Free(table_b);
  EXPECT_EQ(blocks.num_free(), 4);
  EXPECT_EQ(blocks.num_cached(), 2);  // freed, still cached
  // Uncached blocks are reused first; the cached ones survive two allocations.
  std::vector<int32_t> fresh;
  ASSERT_TRUE(blocks.Allocate(2, fresh));
  EXPECT_EQ(blocks.num_cached(), 2);
  std::vector<int32_t> again;
  EXPECT_EQ(blocks.AcquireCachedPrefix(a, 2, again, &chain), 2);
  blocks.Free(again);
  // Now the pool is short: allocating 2 more evicts the cached blocks.
  ASSERT_TRUE(blocks.Allocate(2, fresh));
  EXPECT_EQ(blocks.num_cached(), 0);
  std::vector<int32_t> refs(4, 0);
  for (int32_t b : fresh) ++refs[b];
  EXPECT_TRUE(blocks.CheckConsistency(refs).ok());
}

TEST(BlockManagerTest, DisabledCacheNeverHits) {
  BlockManager blocks(4, 2, false);
  const std::vector<TokenId> a = {1, 2, 3};
  std::vector<int32_t> table;
  ASSERT_TRUE(blocks.Allocate(1, table));
  blocks.Register(table[0], 0, std::span(a).first(2));
  blocks.Free(table);
  std::vector<int32_t> again;
  uint64_t chain = 0;
  EXPECT_EQ(blocks.AcquireCachedPrefix(a, 1, again, &chain), 0);
}

TEST(BlocksForTest, RoundsUp) {
  EXPECT_EQ(BlocksFor(0, 16), 0);
  EXPECT_EQ(BlocksFor(1, 16), 1);
  EXPECT_EQ(BlocksFor(16, 16), 1);
  EXPECT_EQ(BlocksFor(17, 16), 2);
}

}  // namespace
}  // namespace strata
