// LoopPlanner: host-side bookkeeping of one recursive forward step
// (docs/engine.md, "Recursive forward"). Pure CPU logic, no backend.
//
// Design: the K shared layers run once per *round*. In round r every active
// item runs its next loop (loop_begin + r for an item that has not exited),
// so one round batches items at different loops (depth-wise batching): they
// share the weight reads of the base projections, and each run of rows at
// one loop (a LoopSegment) adds its loop's LoRA. An item leaves the rounds
// when it reaches loop_end or exits early.
//
// The residual states of all rows live in one buffer of [num_rows, hidden]
// whose row order (the "slot" order) the planner chooses: active items first,
// sorted by loop (so the segments are few and contiguous), items' rows kept
// together. The order only changes when an item leaves from the middle of
// the active prefix; the round then asks for a row gather (new slot s takes
// old slot gather[s]), which moves whole rows and so never changes a value.
//
// KV: each unique layer k has one cache of [num_blocks, N, kv_heads,
// block_size, head_dim], viewed by attention as [num_blocks * N, ...]:
// (block b, loop l) is physical block b * N + l, so one WriteKv and one
// PagedAttention per layer serve rows at different loops through their
// offset slots and block tables, and copying a scheduler block copies every
// loop of it.
#ifndef STRATA_ENGINE_LOOP_PLANNER_H_
#define STRATA_ENGINE_LOOP_PLANNER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backends/backend.h"
#include "engine/lora.h"
#include "engine/step.h"

namespace strata {

class LoopPlanner {
 public:
  struct ItemState {
    int32_t first_row = 0;  // its first row in the flattened plan order
    int32_t num_rows = 0;
    int32_t start_position = 0;
    std::span<const int32_t> block_table;
    int32_t loop_begin = 0;
    int32_t loop_end = 0;   // resolved: -1 became num_loops
    int32_t next_loop = 0;  // the loop its next round runs = loops done
    bool exited = false;
    int32_t slot = 0;  // slot of its first row in the state buffer

    bool active() const { return !exited && next_loop < loop_end; }
  };

  // One round's metadata. Spans inside `sequences` point into `tables` or
  // the items' block tables: valid while the Round and the items live.
  struct Round {
    // Non-empty: reorder the state buffer first, new slot s = old slot
    // gather[s]. [num_rows of the step]
    std::vector<int32_t> gather;
    int32_t num_rows = 0;                  // active rows: slots [0, num_rows)
    std::vector<int32_t> items;            // active items, in slot order
    std::vector<int32_t> loops;            // each active item's loop this round
    std::vector<LoopSegment> segments;     // runs of rows at one loop
    std::vector<int32_t> positions;        // [num_rows]
    std::vector<int32_t> kv_slots;         // [num_rows], physical
    std::vector<SequenceSlice> sequences;  // per active item
    // Offset block tables, one per active item (entries past items.size()
    // are left from earlier rounds, for their memory).
    std::vector<std::vector<int32_t>> tables;
  };

  // items must be valid (LlamaModel::Validate); loop_end -1 is resolved.
  // The initial slot order puts items by (loop_begin, rounds desc, index),
  // so the items starting from embeddings (loop_begin 0) come first.
  LoopPlanner(std::span<const WorkItem> items, int32_t num_loops,
              int32_t block_size);
  // An empty plan, for Reset.
  LoopPlanner() = default;

  // Plans another step as the constructor does, keeping this planner's
  // memory: a model holds one planner (and one Round) across its steps, so
  // a step's bookkeeping allocates nothing once their sizes have been seen.
  void Reset(std::span<const WorkItem> items, int32_t num_loops,
             int32_t block_size);

  int32_t num_loops() const { return num_loops_; }
  int32_t num_items() const { return static_cast<int32_t>(items_.size()); }
  int32_t num_rows() const { return num_rows_; }
  const ItemState& item(int32_t i) const { return items_[i]; }
  // Items in slot order.
  const std::vector<int32_t>& order() const { return order_; }

  // Plans the next round; false when no item has loops left this step.
  // `round` keeps its vectors' memory from the rounds before.
  bool NextRound(Round* round);
  // After the planned round ran: each of its items has done one more loop.
  void FinishRound(const Round& round);
  // Stops an item after its last finished loop (an early exit).
  void Exit(int32_t item) { items_[item].exited = true; }

  // Slot of a row given in flattened plan order.
  int32_t SlotOfRow(int32_t row) const;
  // Physical KV slot of position `position` of `table` at `loop`.
  int32_t KvSlot(std::span<const int32_t> table, int32_t loop,
                 int32_t position) const;
  // Physical block id of scheduler block `block` at `loop`.
  int32_t PhysicalBlock(int32_t block, int32_t loop) const {
    return block * num_loops_ + loop;
  }

 private:
  int32_t num_loops_ = 1;
  int32_t block_size_ = 1;
  int32_t num_rows_ = 0;
  std::vector<ItemState> items_;
  std::vector<int32_t> order_;     // items by slot
  std::vector<int32_t> row_item_;  // flattened row -> item
  // NextRound's scratch: the active and inactive items, and their order.
  std::vector<int32_t> active_, inactive_, desired_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOOP_PLANNER_H_
