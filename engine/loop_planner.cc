#include "engine/loop_planner.h"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace strata {

LoopPlanner::LoopPlanner(std::span<const WorkItem> items, int32_t num_loops,
                         int32_t block_size) {
  Reset(items, num_loops, block_size);
}

void LoopPlanner::Reset(std::span<const WorkItem> items, int32_t num_loops,
                        int32_t block_size) {
  num_loops_ = num_loops;
  block_size_ = block_size;
  num_rows_ = 0;
  row_item_.clear();
  items_.assign(items.size(), ItemState{});
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& w = items[i];
    ItemState& s = items_[i];
    s.first_row = num_rows_;
    s.num_rows = static_cast<int32_t>(w.tokens.size());
    s.start_position = w.start_position;
    s.block_table = w.block_table;
    s.loop_begin = w.loop_begin;
    s.loop_end = w.loop_end < 0 ? num_loops : w.loop_end;
    s.next_loop = w.loop_begin;
    num_rows_ += s.num_rows;
    row_item_.insert(row_item_.end(), s.num_rows, static_cast<int32_t>(i));
  }
  order_.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    order_[i] = static_cast<int32_t>(i);
  }
  // Ties keep the items' order (std::sort with the index as the last key:
  // stable, without std::stable_sort's buffer).
  std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
    const ItemState& x = items_[a];
    const ItemState& y = items_[b];
    if (x.loop_begin != y.loop_begin) return x.loop_begin < y.loop_begin;
    const int32_t x_rounds = x.loop_end - x.loop_begin;
    const int32_t y_rounds = y.loop_end - y.loop_begin;
    if (x_rounds != y_rounds) return x_rounds > y_rounds;
    return a < b;
  });
  int32_t slot = 0;
  for (int32_t i : order_) {
    items_[i].slot = slot;
    slot += items_[i].num_rows;
  }
}

bool LoopPlanner::NextRound(Round* round) {
  // Desired order: active items by loop (stable), then the rest as they are.
  std::vector<int32_t>& active = active_;
  std::vector<int32_t>& inactive = inactive_;
  active.clear();
  inactive.clear();
  for (int32_t i : order_) {
    (items_[i].active() ? active : inactive).push_back(i);
  }
  if (active.empty()) return false;
  // The active items come nearly sorted (the order of the round before,
  // each one loop further): an insertion sort, stable as std::stable_sort
  // is and without its buffer.
  for (size_t a = 1; a < active.size(); ++a) {
    const int32_t item = active[a];
    size_t b = a;
    for (; b > 0 && items_[active[b - 1]].next_loop > items_[item].next_loop;
         --b) {
      active[b] = active[b - 1];
    }
    active[b] = item;
  }
  std::vector<int32_t>& desired = desired_;
  desired.assign(active.begin(), active.end());
  desired.insert(desired.end(), inactive.begin(), inactive.end());

  round->gather.clear();
  if (desired != order_) {
    round->gather.reserve(num_rows_);
    for (int32_t i : desired) {
      for (int32_t r = 0; r < items_[i].num_rows; ++r) {
        round->gather.push_back(items_[i].slot + r);
      }
    }
    std::swap(order_, desired);
    int32_t slot = 0;
    for (int32_t i : order_) {
      items_[i].slot = slot;
      slot += items_[i].num_rows;
    }
  }

  round->items = active;
  round->loops.clear();
  round->segments.clear();
  round->positions.clear();
  round->kv_slots.clear();
  round->sequences.clear();
  // Resized, not reassigned: each table keeps its memory.
  if (round->tables.size() < active.size()) {
    round->tables.resize(active.size());
  }
  int32_t rows = 0;
  for (size_t a = 0; a < active.size(); ++a) {
    const ItemState& s = items_[active[a]];
    const int32_t loop = s.next_loop;
    round->loops.push_back(loop);
    if (round->segments.empty() || round->segments.back().loop != loop) {
      round->segments.push_back({loop, rows, 0});
    }
    round->segments.back().num_rows += s.num_rows;
    for (int32_t t = 0; t < s.num_rows; ++t) {
      const int32_t pos = s.start_position + t;
      round->positions.push_back(pos);
      round->kv_slots.push_back(KvSlot(s.block_table, loop, pos));
    }
    std::span<const int32_t> table = s.block_table;
    if (num_loops_ > 1) {
      std::vector<int32_t>& offset = round->tables[a];
      offset.clear();
      for (int32_t b : s.block_table) offset.push_back(PhysicalBlock(b, loop));
      table = offset;
    }
    round->sequences.push_back({rows, s.num_rows, s.start_position, table});
    rows += s.num_rows;
  }
  round->num_rows = rows;
  return true;
}

void LoopPlanner::FinishRound(const Round& round) {
  for (int32_t i : round.items) ++items_[i].next_loop;
}

int32_t LoopPlanner::SlotOfRow(int32_t row) const {
  const ItemState& s = items_[row_item_[row]];
  return s.slot + (row - s.first_row);
}

int32_t LoopPlanner::KvSlot(std::span<const int32_t> table, int32_t loop,
                            int32_t position) const {
  return PhysicalBlock(table[position / block_size_], loop) * block_size_ +
         position % block_size_;
}

}  // namespace strata
