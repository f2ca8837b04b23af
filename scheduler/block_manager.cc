#include "scheduler/block_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata {

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size,
                           bool enable_prefix_caching)
    : block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      blocks_(num_blocks) {
  if (enable_prefix_caching_) {
    tokens_.resize(static_cast<size_t>(num_blocks) * block_size);
  }
  for (int32_t b = 0; b < num_blocks; ++b) PushBack(b);
}

uint64_t BlockManager::ChainHash(uint64_t parent,
                                 std::span<const TokenId> tokens) {
  // splitmix64-style mixing of the parent hash and each token.
  auto mix = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(parent ^ 0x5374726174614b56ull);
  for (const TokenId t : tokens) h = mix(h ^ static_cast<uint32_t>(t));
  return h == 0 ? 1 : h;  // 0 means "no parent"
}

void BlockManager::PushFront(int32_t b) {
  blocks_[b].prev = kNone;
  blocks_[b].next = head_;
  if (head_ != kNone) blocks_[head_].prev = b;
  head_ = b;
  if (tail_ == kNone) tail_ = b;
  ++num_free_;
}

void BlockManager::PushBack(int32_t b) {
  blocks_[b].next = kNone;
  blocks_[b].prev = tail_;
  if (tail_ != kNone) blocks_[tail_].next = b;
  tail_ = b;
  if (head_ == kNone) head_ = b;
  ++num_free_;
}

void BlockManager::Unlink(int32_t b) {
  Block& block = blocks_[b];
  if (block.prev != kNone) {
    blocks_[block.prev].next = block.next;
  } else {
    head_ = block.next;
  }
  if (block.next != kNone) {
    blocks_[block.next].prev = block.prev;
  } else {
    tail_ = block.prev;
  }
  block.prev = block.next = kNone;
  --num_free_;
}

std::span<const TokenId> BlockManager::BlockTokens(int32_t b) const {
  return std::span<const TokenId>(tokens_).subspan(
      static_cast<size_t>(b) * block_size_, block_size_);
}

bool BlockManager::Allocate(int32_t n, std::vector<int32_t>& table) {
  if (n > num_free_) return false;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = head_;
    Unlink(b);
    Block& block = blocks_[b];
    STRATA_CHECK(block.ref_count == 0) << "free block " << b << " in use";
    if (block.cached) {  // evict
      cache_.erase(block.hash);
      block.cached = false;
      block.hash = 0;
    }
    block.ref_count = 1;
    table.push_back(b);
  }
  return true;
}

void BlockManager::Free(std::span<const int32_t> table) {
  // Free the tail of a table first: its blocks are the least likely to be
  // shared prefixes, so they should be evicted before the table's head.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    const int32_t b = *it;
    Block& block = blocks_[b];
    STRATA_CHECK(block.ref_count > 0) << "block " << b << " freed twice";
    if (--block.ref_count > 0) continue;
    if (block.cached) {
      PushBack(b);
    } else {
      PushFront(b);
    }
  }
}

void BlockManager::Fork(std::span<const int32_t> table) {
  for (const int32_t b : table) {
    STRATA_CHECK(blocks_[b].ref_count > 0) << "forking free block " << b;
    ++blocks_[b].ref_count;
  }
}

bool BlockManager::CopyOnWrite(std::vector<int32_t>& table, size_t index,
                               std::optional<BlockCopy>* copy) {
  const int32_t old_block = table[index];
  STRATA_CHECK(blocks_[old_block].ref_count > 0)
      << "copy-on-write of free block " << old_block;
  if (blocks_[old_block].ref_count == 1) return true;
  std::vector<int32_t> fresh;
  if (!Allocate(1, fresh)) return false;
  // Shared, so at least one other table keeps it: it never reaches zero here.
  --blocks_[old_block].ref_count;
  table[index] = fresh[0];
  *copy = BlockCopy{old_block, fresh[0]};
  return true;
}

int32_t BlockManager::AcquireCachedPrefix(std::span<const TokenId> tokens,
                                          int32_t max_blocks,
                                          std::vector<int32_t>& table,
                                          uint64_t* chain_hash,
                                          uint64_t variant) {
  *chain_hash = variant;
  if (!enable_prefix_caching_) return 0;
  int32_t taken = 0;
  uint64_t parent = variant;
  for (; taken < max_blocks; ++taken) {
    const auto block_tokens =
        tokens.subspan(static_cast<size_t>(taken) * block_size_, block_size_);
    const uint64_t h = ChainHash(parent, block_tokens);
    const auto it = cache_.find(h);
    if (it == cache_.end()) break;
    const int32_t b = it->second;
    const auto cached = BlockTokens(b);
    if (blocks_[b].variant != variant ||
        !std::equal(cached.begin(), cached.end(), block_tokens.begin())) {
      break;
    }
    if (blocks_[b].ref_count++ == 0) Unlink(b);
    table.push_back(b);
    parent = h;
  }
  *chain_hash = parent;
  return taken;
}

uint64_t BlockManager::Register(int32_t b, uint64_t parent_hash,
                                std::span<const TokenId> tokens,
                                uint64_t variant) {
  const uint64_t h = ChainHash(parent_hash, tokens);
  if (!enable_prefix_caching_) return h;
  Block& block = blocks_[b];
  STRATA_CHECK(block.ref_count > 0 && !block.cached)
      << "registering block " << b << " that is free or already cached";
  if (cache_.contains(h)) return h;
  block.cached = true;
  block.hash = h;
  block.variant = variant;
  cache_[h] = b;
  std::copy(tokens.begin(), tokens.end(),
            tokens_.begin() + static_cast<size_t>(b) * block_size_);
  return h;
}

absl::Status BlockManager::CheckConsistency(
    std::span<const int32_t> expected_refs) const {
  if (expected_refs.size() != blocks_.size()) {
    return absl::InternalError("expected_refs has the wrong size");
  }
  int32_t zero = 0;
  for (size_t b = 0; b < blocks_.size(); ++b) {
    if (blocks_[b].ref_count != expected_refs[b]) {
      return absl::InternalError(
          absl::StrCat("block ", b, " has ref_count ", blocks_[b].ref_count,
                       " but ", expected_refs[b], " block-table references"));
    }
    if (blocks_[b].ref_count == 0) ++zero;
  }
  int32_t listed = 0;
  for (int32_t b = head_; b != kNone; b = blocks_[b].next) {
    if (blocks_[b].ref_count != 0) {
      return absl::InternalError(
          absl::StrCat("block ", b, " is on the free list but referenced"));
    }
    if (++listed > num_total()) {
      return absl::InternalError("free list has a cycle");
    }
  }
  if (listed != zero || listed != num_free_) {
    return absl::InternalError(
        absl::StrCat("free list holds ", listed, " blocks, ", zero,
                     " are unreferenced, num_free is ", num_free_));
  }
  for (const auto& [hash, b] : cache_) {
    if (!blocks_[b].cached || blocks_[b].hash != hash) {
      return absl::InternalError(
          absl::StrCat("cache entry for block ", b, " is stale"));
    }
  }
  return absl::OkStatus();
}

std::string BlockManager::DebugString() const {
  return absl::StrCat("BlockManager{used=", num_used(), " free=", num_free(),
                      " cached=", num_cached(), " total=", num_total(), "}");
}

}  // namespace strata
