#include "scheduler/block_manager.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata {

BlockManager::BlockManager(int32_t num_blocks) : ref_counts_(num_blocks, 0) {
  free_.reserve(num_blocks);
  // Reverse order so that block 0 is handed out first.
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

bool BlockManager::Allocate(int32_t n, std::vector<int32_t>& table) {
  if (n > num_free()) return false;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t block = free_.back();
    free_.pop_back();
    STRATA_CHECK(ref_counts_[block] == 0)
        << "free block " << block << " in use";
    ref_counts_[block] = 1;
    table.push_back(block);
  }
  return true;
}

void BlockManager::Free(std::span<const int32_t> blocks) {
  for (const int32_t block : blocks) {
    STRATA_CHECK(ref_counts_[block] > 0) << "block " << block << " freed twice";
    if (--ref_counts_[block] == 0) free_.push_back(block);
  }
}

std::string BlockManager::DebugString() const {
  return absl::StrCat("BlockManager{used=", num_used(), " free=", num_free(),
                      " total=", num_total(), "}");
}

}  // namespace strata
