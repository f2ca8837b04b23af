// Bookkeeping for the paged KV cache's block pool: which physical blocks are
// free and how many block tables reference each one. The memory itself lives
// in the engine; the scheduler only hands out block ids.
//
// Threading: engine thread only.
#ifndef STRATA_SCHEDULER_BLOCK_MANAGER_H_
#define STRATA_SCHEDULER_BLOCK_MANAGER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace strata {

class BlockManager {
 public:
  explicit BlockManager(int32_t num_blocks);

  // Appends `n` newly allocated blocks (reference count 1) to `table`.
  // Returns false, allocating nothing, when fewer than `n` are free: "does not
  // fit" is a normal outcome that triggers preemption, not an error.
  bool Allocate(int32_t n, std::vector<int32_t>& table);

  // Drops one reference to each block; blocks reaching zero become free.
  void Free(std::span<const int32_t> blocks);

  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_total() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_used() const { return num_total() - num_free(); }
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }

  std::string DebugString() const;

 private:
  std::vector<int32_t> ref_counts_;  // [num_blocks]
  // Free block ids used as a stack: the most recently freed block is reused
  // first, which keeps the working set of KV memory small and warm.
  std::vector<int32_t> free_;
};

// Number of blocks needed to hold `num_tokens` tokens.
inline int32_t BlocksFor(int32_t num_tokens, int32_t block_size) {
  return (num_tokens + block_size - 1) / block_size;
}

}  // namespace strata

#endif  // STRATA_SCHEDULER_BLOCK_MANAGER_H_
