#include "scheduler/block_manager.h"

#include <algorithm>
#include <optional>
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

// K/V computed under a prompt-exit rule (a variant) are found only by
// requests of the same rule: not by exact ones, nor by another rule's.
TEST(BlockManagerTest, AVariantsBlocksAreFoundUnderItOnly) {
  BlockManager blocks(4, 2, true);
  const std::vector<TokenId> a = {1, 2, 3, 4, 5};
  constexpr uint64_t kRule = 0x1234567u, kOther = 0x7654321u;
  std::vector<int32_t> table_a;
  ASSERT_TRUE(blocks.Allocate(2, table_a));
  uint64_t chain = kRule;
  chain = blocks.Register(table_a[0], chain, std::span(a).first(2), kRule);
  chain = blocks.Register(table_a[1], chain, std::span(a).subspan(2, 2), kRule);
  EXPECT_EQ(blocks.num_cached(), 2);

  for (const uint64_t variant : {uint64_t{0}, kOther}) {
    std::vector<int32_t> table;
    uint64_t got = 0;
    EXPECT_EQ(blocks.AcquireCachedPrefix(a, 2, table, &got, variant), 0);
    EXPECT_TRUE(table.empty());
    EXPECT_EQ(got, variant);  // a chain of that variant starts from it
  }
  std::vector<int32_t> table_b;
  uint64_t got = 0;
  EXPECT_EQ(blocks.AcquireCachedPrefix(a, 2, table_b, &got, kRule), 2);
  EXPECT_EQ(got, chain);
  EXPECT_EQ(table_b, table_a);
  // An exact request's own blocks of the same tokens live beside them.
  std::vector<int32_t> table_c;
  ASSERT_TRUE(blocks.Allocate(1, table_c));
  blocks.Register(table_c[0], 0, std::span(a).first(2));
  EXPECT_EQ(blocks.num_cached(), 3);
  std::vector<int32_t> table_d;
  EXPECT_EQ(blocks.AcquireCachedPrefix(a, 2, table_d, &got), 1);
  EXPECT_EQ(table_d, table_c);
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

// Block-table references to each block of a pool of `num_blocks`.
std::vector<int32_t> Refs(int32_t num_blocks,
                          const std::vector<std::vector<int32_t>>& tables) {
  std::vector<int32_t> refs(num_blocks, 0);
  for (const auto& table : tables) {
    for (int32_t b : table) ++refs[b];
  }
  return refs;
}

TEST(BlockManagerTest, ForkSharesEveryBlockOfTheTable) {
  BlockManager blocks(6, 4, true);
  std::vector<int32_t> parent;
  ASSERT_TRUE(blocks.Allocate(3, parent));  // e.g. 10 tokens: 4 + 4 + 2
  std::vector<int32_t> a = parent;
  blocks.Fork(a);
  std::vector<int32_t> b = parent;
  blocks.Fork(b);
  for (int32_t block : parent) EXPECT_EQ(blocks.ref_count(block), 3);
  EXPECT_EQ(blocks.num_used(), 3);
  EXPECT_TRUE(blocks.CheckConsistency(Refs(6, {parent, a, b})).ok());
  // A reference count that disagrees with the tables is reported.
  EXPECT_FALSE(blocks.CheckConsistency(Refs(6, {parent, a})).ok());

  blocks.Free(a);
  blocks.Free(parent);
  for (int32_t block : b) EXPECT_EQ(blocks.ref_count(block), 1);
  blocks.Free(b);
  EXPECT_EQ(blocks.num_free(), 6);
  EXPECT_TRUE(blocks.CheckConsistency(Refs(6, {})).ok());
}

TEST(BlockManagerTest, CopyOnWriteOfASharedPartialBlock) {
  BlockManager blocks(5, 4, true);
  std::vector<int32_t> parent;
  ASSERT_TRUE(blocks.Allocate(2, parent));  // full block, partial block
  std::vector<int32_t> a = parent;
  blocks.Fork(a);
  std::vector<int32_t> b = parent;
  blocks.Fork(b);
  const int32_t shared = parent[1];

  // The first writer gets a fresh block and a copy of the shared one.
  std::optional<BlockCopy> copy;
  ASSERT_TRUE(blocks.CopyOnWrite(a, 1, &copy));
  ASSERT_TRUE(copy.has_value());
  EXPECT_EQ(copy->src, shared);
  EXPECT_EQ(copy->dst, a[1]);
  EXPECT_NE(a[1], shared);
  EXPECT_EQ(a[0], parent[0]);  // the full block stays shared
  EXPECT_EQ(blocks.ref_count(shared), 2);
  EXPECT_EQ(blocks.ref_count(a[1]), 1);
  EXPECT_EQ(blocks.ref_count(parent[0]), 3);
  EXPECT_TRUE(blocks.CheckConsistency(Refs(5, {parent, a, b})).ok());

  // So does the second; the last holder writes in place (no copy).
  copy.reset();
  ASSERT_TRUE(blocks.CopyOnWrite(b, 1, &copy));
  ASSERT_TRUE(copy.has_value());
  EXPECT_EQ(copy->src, shared);
  EXPECT_NE(b[1], a[1]);
  copy.reset();
  ASSERT_TRUE(blocks.CopyOnWrite(parent, 1, &copy));
  EXPECT_FALSE(copy.has_value());
  EXPECT_EQ(parent[1], shared);
  EXPECT_EQ(blocks.ref_count(shared), 1);
  EXPECT_EQ(blocks.num_used(), 4);  // the full block, the partial one, 2 copies
  EXPECT_TRUE(blocks.CheckConsistency(Refs(5, {parent, a, b})).ok());

  blocks.Free(a);
  blocks.Free(b);
  blocks.Free(parent);
  EXPECT_EQ(blocks.num_free(), 5);
  EXPECT_TRUE(blocks.CheckConsistency(Refs(5, {})).ok());
}

TEST(BlockManagerTest, CopyOnWriteWithoutAFreeBlockChangesNothing) {
  BlockManager blocks(2, 4, true);
  std::vector<int32_t> parent;
  ASSERT_TRUE(blocks.Allocate(2, parent));
  std::vector<int32_t> sibling = parent;
  blocks.Fork(sibling);
  std::optional<BlockCopy> copy;
  EXPECT_FALSE(blocks.CopyOnWrite(sibling, 1, &copy));
  EXPECT_FALSE(copy.has_value());
  EXPECT_EQ(sibling, parent);
  EXPECT_EQ(blocks.ref_count(parent[1]), 2);
  EXPECT_TRUE(blocks.CheckConsistency(Refs(2, {parent, sibling})).ok());
}

TEST(BlockManagerDeathTest, ForkingAFreeBlockIsAnInvariantViolation) {
  BlockManager blocks(2, 4, true);
  const std::vector<int32_t> table = {0};
  EXPECT_DEATH(blocks.Fork(table), "forking free block");
}

TEST(BlocksForTest, RoundsUp) {
  EXPECT_EQ(BlocksFor(0, 16), 0);
  EXPECT_EQ(BlocksFor(1, 16), 1);
  EXPECT_EQ(BlocksFor(16, 16), 1);
  EXPECT_EQ(BlocksFor(17, 16), 2);
}

}  // namespace
}  // namespace strata
