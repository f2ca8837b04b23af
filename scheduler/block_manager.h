// Bookkeeping for the paged KV cache's block pool: which physical blocks are
// free, how many block tables reference each one, and which full blocks hold
// a known token prefix (prefix caching). The memory itself lives in the
// engine; the scheduler only hands out block ids.
//
// Forking (n > 1 samples of one prompt): a forked sequence takes one more
// reference to every block of its parent's table. Full blocks are then only
// read; before a sequence writes into a shared, partly filled block it gets a
// copy of its own (CopyOnWrite), which the engine fills before the step.
//
// Prefix caching: a full block is identified by a hash chained over its
// parent's hash and its own tokens, so equal hashes mean equal prefixes up to
// and including this block. A block whose last reference is dropped stays in
// the cache, evictable: free blocks form one LRU list, with uncached blocks at
// the front (reused first) and cached ones appended at the back as they are
// freed, so the least recently used cached block is evicted first.
//
// Threading: engine thread only.
#ifndef STRATA_SCHEDULER_BLOCK_MANAGER_H_
#define STRATA_SCHEDULER_BLOCK_MANAGER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "engine/step.h"

namespace strata {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size,
               bool enable_prefix_caching);

  // Appends `n` newly allocated blocks (reference count 1) to `table`,
  // evicting cached blocks if needed. Returns false, allocating nothing, when
  // fewer than `n` are free: "does not fit" is a normal outcome that triggers
  // preemption, not an error.
  bool Allocate(int32_t n, std::vector<int32_t>& table);

  // Drops one reference to each block; blocks reaching zero become free (and
  // stay cached if they were registered).
  void Free(std::span<const int32_t> blocks);

  // Takes one more reference to each block of `table` (all in use): a
  // sequence forked from another shares its blocks.
  void Fork(std::span<const int32_t> table);

  // Copy-on-write of table[index] before its owner writes into it. When the
  // block is shared (reference count > 1), replaces it with a newly
  // allocated block, drops this table's reference to the old one, and sets
  // `*copy` to {old, new}: the engine must copy the old block's K/V into the
  // new one before writing. Returns false, changing nothing, when no block is
  // free. An unshared block is left alone (returns true, `*copy` unset).
  bool CopyOnWrite(std::vector<int32_t>& table, size_t index,
                   std::optional<BlockCopy>* copy);

  // Takes a reference on the cached blocks holding the longest prefix of
  // `tokens` made of at most `max_blocks` full blocks, appends them to
  // `table` and returns how many. `*chain_hash` is the hash of the last block
  // taken (`variant` if none), to continue the chain with Register().
  // `variant` says how the K/V were computed: 0 exactly (every loop of a
  // recursive model); otherwise the hash of the early-exit rule the prompt
  // ran under (Scheduler::Options::prompt_exits), whose K/V only requests
  // with the same rule may share. A block is found only under its own.
  int32_t AcquireCachedPrefix(std::span<const TokenId> tokens,
                              int32_t max_blocks, std::vector<int32_t>& table,
                              uint64_t* chain_hash, uint64_t variant = 0);

  // Records that `block` now holds the K/V of `tokens` (exactly one full
  // block) following the prefix whose chain hash is `parent_hash`, computed
  // as `variant` says (the chain of a variant starts from it: the first
  // block's parent_hash is the variant). Returns this block's chain hash. If
  // the same prefix is already cached in another block, `block` stays
  // unregistered (it is freed like any other).
  uint64_t Register(int32_t block, uint64_t parent_hash,
                    std::span<const TokenId> tokens, uint64_t variant = 0);

  int32_t num_free() const { return num_free_; }
  int32_t num_total() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t num_used() const { return num_total() - num_free(); }
  int32_t num_cached() const { return static_cast<int32_t>(cache_.size()); }
  int32_t ref_count(int32_t block) const { return blocks_[block].ref_count; }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return enable_prefix_caching_; }

  // Checks the internal invariants against `expected_refs` ([num_blocks], the
  // number of block-table references to each block): reference counts, free
  // list, cache map. For tests and debugging.
  absl::Status CheckConsistency(std::span<const int32_t> expected_refs) const;

  std::string DebugString() const;

 private:
  static constexpr int32_t kNone = -1;
  struct Block {
    int32_t ref_count = 0;
    bool cached = false;
    uint64_t hash = 0;
    uint64_t variant = 0;  // of the K/V it holds while cached
    // Links in the free list while ref_count == 0.
    int32_t prev = kNone;
    int32_t next = kNone;
  };

  static uint64_t ChainHash(uint64_t parent, std::span<const TokenId> tokens);
  void PushFront(int32_t block);
  void PushBack(int32_t block);
  void Unlink(int32_t block);
  std::span<const TokenId> BlockTokens(int32_t block) const;

  const int32_t block_size_;
  const bool enable_prefix_caching_;
  std::vector<Block> blocks_;  // [num_blocks]
  int32_t head_ = kNone;       // next block to hand out
  int32_t tail_ = kNone;
  int32_t num_free_ = 0;
  absl::flat_hash_map<uint64_t, int32_t> cache_;  // chain hash -> block
  // The tokens of every cached block, checked on lookup so that a hash
  // collision can never serve another prompt's K/V. [num_blocks * block_size]
  std::vector<TokenId> tokens_;
};

// Number of blocks needed to hold `num_tokens` tokens.
inline int32_t BlocksFor(int32_t num_tokens, int32_t block_size) {
  return (num_tokens + block_size - 1) / block_size;
}

}  // namespace strata

#endif  // STRATA_SCHEDULER_BLOCK_MANAGER_H_
