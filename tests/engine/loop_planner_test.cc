// LoopPlanner: the host-side rounds of a recursive step (no backend).
#include "engine/loop_planner.h"

#include <cstdint>
#include <iterator>
#include <span>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

WorkItem Item(std::span<const TokenId> tokens, int32_t start,
              std::span<const int32_t> table, int32_t loop_begin,
              int32_t loop_end) {
  WorkItem item;
  item.tokens = tokens;
  item.start_position = start;
  item.block_table = table;
  item.loop_begin = loop_begin;
  item.loop_end = loop_end;
  return item;
}

// A plain model (N = 1): one round, every row, in plan order, no gather, the
// block tables and slots as they are.
TEST(LoopPlannerTest, PlainModelIsOneRoundInPlanOrder) {
  const std::vector<TokenId> a = {1, 2, 3}, b = {4};
  const std::vector<int32_t> ta = {5, 2}, tb = {6, 7};
  const WorkItem items[] = {Item(a, 0, ta, 0, -1), Item(b, 2, tb, 0, -1)};
  LoopPlanner planner(items, /*num_loops=*/1, /*block_size=*/2);
  LoopPlanner::Round round;
  ASSERT_TRUE(planner.NextRound(&round));
  EXPECT_THAT(round.gather, IsEmpty());
  EXPECT_EQ(round.num_rows, 4);
  EXPECT_THAT(round.items, ElementsAre(0, 1));
  EXPECT_THAT(round.positions, ElementsAre(0, 1, 2, 2));
  // slot = block * block_size + offset.
  EXPECT_THAT(round.kv_slots, ElementsAre(10, 11, 4, 14));
  ASSERT_EQ(round.sequences.size(), 2u);
  EXPECT_EQ(round.sequences[1].first_row, 3);
  EXPECT_EQ(round.sequences[1].block_table.data(), tb.data());
  ASSERT_EQ(round.segments.size(), 1u);
  EXPECT_EQ(round.segments[0].num_rows, 4);
  planner.FinishRound(round);
  EXPECT_FALSE(planner.NextRound(&round));
  EXPECT_EQ(planner.SlotOfRow(3), 3);
}

// Items at different loops share rounds; the active rows stay a prefix
// sorted by loop, and a reorder is asked for when an item in the middle
// stops.
TEST(LoopPlannerTest, RoundsMixLoopsAndReorderWhenAnItemStops) {
  const std::vector<TokenId> a = {1, 2}, b = {3}, c = {4};
  const std::vector<int32_t> table = {1, 0};
  // a: loops [0, 3) (2 rows); b: loop [0, 1); c: loops [1, 3).
  const WorkItem items[] = {Item(a, 0, table, 0, -1), Item(b, 2, table, 0, 1),
                            Item(c, 3, table, 1, 3)};
  LoopPlanner planner(items, /*num_loops=*/3, /*block_size=*/2);
  // Initial order by loop_begin, longer first: a, b, c.
  EXPECT_THAT(planner.order(), ElementsAre(0, 1, 2));

  LoopPlanner::Round round;
  ASSERT_TRUE(planner.NextRound(&round));
  EXPECT_THAT(round.gather, IsEmpty());
  EXPECT_THAT(round.items, ElementsAre(0, 1, 2));
  EXPECT_THAT(round.loops, ElementsAre(0, 0, 1));
  ASSERT_EQ(round.segments.size(), 2u);
  EXPECT_EQ(round.segments[0].loop, 0);
  EXPECT_EQ(round.segments[0].num_rows, 3);
  EXPECT_EQ(round.segments[1].loop, 1);
  EXPECT_EQ(round.segments[1].first_row, 3);
  // Physical block = block * N + loop: c (position 3, block table[1] = 0,
  // loop 1) -> block 1, slot 1 * 2 + 1.
  EXPECT_EQ(round.kv_slots[3], 3);
  // a's position 0 at loop 0: block table[0] = 1 -> physical 3 -> slot 6.
  EXPECT_EQ(round.kv_slots[0], 6);
  EXPECT_THAT(round.sequences[2].block_table, ElementsAre(4, 1));
  planner.FinishRound(round);

  // b is done: c moves up next to a, by a gather of the state rows.
  ASSERT_TRUE(planner.NextRound(&round));
  EXPECT_THAT(round.gather, ElementsAre(0, 1, 3, 2));
  EXPECT_THAT(round.items, ElementsAre(0, 2));
  EXPECT_THAT(round.loops, ElementsAre(1, 2));
  EXPECT_EQ(round.num_rows, 3);
  EXPECT_EQ(planner.SlotOfRow(2), 3);  // b's row now after the active ones
  EXPECT_EQ(planner.SlotOfRow(3), 2);
  planner.FinishRound(round);

  // c reached loop_end 3; a exits early instead of its last loop.
  planner.Exit(0);
  EXPECT_FALSE(planner.NextRound(&round));
  EXPECT_EQ(planner.item(0).next_loop, 2);
  EXPECT_EQ(planner.item(1).next_loop, 1);
  EXPECT_EQ(planner.item(2).next_loop, 3);
}

// A round as plain values (a Round has no ==): its segments and sequences
// as tuples, the sequences' block tables by content.
auto RoundValues(const LoopPlanner::Round& r) {
  std::vector<std::tuple<int32_t, int32_t, int32_t>> segments;
  for (const LoopSegment& s : r.segments) {
    segments.emplace_back(s.loop, s.first_row, s.num_rows);
  }
  std::vector<std::tuple<int32_t, int32_t, int32_t, std::vector<int32_t>>>
      sequences;
  for (const SequenceSlice& s : r.sequences) {
    sequences.emplace_back(
        s.first_row, s.num_tokens, s.start_position,
        std::vector<int32_t>(s.block_table.begin(), s.block_table.end()));
  }
  return std::make_tuple(r.gather, r.num_rows, r.items, r.loops, segments,
                         r.positions, r.kv_slots, sequences);
}

// A model keeps one planner and one Round across its steps (Reset): every
// step must plan as a fresh planner and Round would, whatever the steps
// before left in them (a larger batch, more rounds, reorders).
TEST(LoopPlannerTest, ResetPlansLikeAFreshPlanner) {
  const std::vector<TokenId> one = {1}, two = {2, 3};
  const std::vector<int32_t> t0 = {1, 0}, t1 = {2, 3}, t2 = {0, 4};
  // Ties in (loop_begin, loops to run) keep the items' order.
  const WorkItem mixed[] = {Item(one, 3, t0, 1, 3),  Item(one, 2, t1, 0, 1),
                            Item(two, 0, t2, 0, -1), Item(one, 3, t1, 1, 3),
                            Item(one, 1, t2, 0, 1),  Item(one, 2, t0, 2, 3)};
  const WorkItem fewer[] = {Item(one, 1, t2, 0, 1), Item(one, 3, t0, 2, -1)};
  const std::span<const WorkItem> steps[] = {mixed, fewer, mixed, fewer};
  LoopPlanner kept;
  LoopPlanner::Round kept_round;
  for (size_t step = 0; step < std::size(steps); ++step) {
    SCOPED_TRACE(step);
    kept.Reset(steps[step], /*num_loops=*/3, /*block_size=*/2);
    LoopPlanner fresh(steps[step], /*num_loops=*/3, /*block_size=*/2);
    EXPECT_EQ(kept.order(), fresh.order());
    EXPECT_EQ(kept.num_rows(), fresh.num_rows());
    for (int round = 0;; ++round) {
      SCOPED_TRACE(round);
      LoopPlanner::Round fresh_round;
      const bool more = fresh.NextRound(&fresh_round);
      ASSERT_EQ(kept.NextRound(&kept_round), more);
      if (!more) break;
      EXPECT_EQ(RoundValues(kept_round), RoundValues(fresh_round));
      if (round == 0 && step == 0) {  // an early exit: a reorder follows
        kept.Exit(0);
        fresh.Exit(0);
      }
      kept.FinishRound(kept_round);
      fresh.FinishRound(fresh_round);
    }
    for (int32_t i = 0; i < kept.num_items(); ++i) {
      EXPECT_EQ(kept.item(i).slot, fresh.item(i).slot);
      EXPECT_EQ(kept.item(i).next_loop, fresh.item(i).next_loop);
    }
  }
  // The mixed step's order: loop_begin 0 first, the longer runs first, ties
  // in item order.
  LoopPlanner fresh(mixed, /*num_loops=*/3, /*block_size=*/2);
  EXPECT_THAT(fresh.order(), ElementsAre(2, 1, 4, 0, 3, 5));
}

}  // namespace
}  // namespace strata
