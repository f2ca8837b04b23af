#include "engine/kv_cache/hidden_state_store.h"

#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {
namespace {

// Recycled tensors kept per row count; beyond this they are freed.
constexpr size_t kMaxFreePerSize = 256;
// Map nodes kept for reuse: a decoding request's entry moves to a new key
// (its next position) every token.
constexpr size_t kMaxSpareNodes = 1024;

}  // namespace

HiddenStateStore::HiddenStateStore(Backend* backend, int64_t hidden,
                                   int64_t max_free_bytes)
    : backend_(backend), hidden_(hidden), max_free_bytes_(max_free_bytes) {}

const HiddenStateStore::Entry* HiddenStateStore::Find(
    RequestId request, int32_t start_position) const {
  auto it = entries_.find({request, start_position});
  return it == entries_.end() ? nullptr : &it->second;
}

absl::StatusOr<HiddenStateStore::Entry*> HiddenStateStore::Put(
    RequestId request, int32_t start_position, int32_t num_tokens) {
  const Key key{request, start_position};
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (spare_nodes_.empty()) {
      it = entries_.emplace(key, Entry{}).first;
    } else {
      std::map<Key, Entry>::node_type node = std::move(spare_nodes_.back());
      spare_nodes_.pop_back();
      node.key() = key;
      it = entries_.insert(std::move(node)).position;
    }
  }
  Entry& entry = it->second;
  if (entry.num_tokens == num_tokens && !entry.state.empty()) return &entry;
  if (!entry.state.empty()) Recycle(std::move(entry.state));
  entry.num_tokens = 0;
  std::vector<Tensor>& pool = free_[num_tokens];
  if (!pool.empty()) {
    entry.state = std::move(pool.back());
    pool.pop_back();
    free_bytes_ -= static_cast<int64_t>(entry.state.size_bytes());
  } else {
    absl::StatusOr<Tensor> tensor =
        backend_->Allocate(ElementType::kF32, {num_tokens, hidden_});
    if (!tensor.ok()) {
      Drop(it);
      return tensor.status();
    }
    entry.state = *std::move(tensor);
  }
  entry.num_tokens = num_tokens;
  return &entry;
}

void HiddenStateStore::Erase(RequestId request, int32_t start_position) {
  auto it = entries_.find({request, start_position});
  if (it == entries_.end()) return;
  Drop(it);
}

void HiddenStateStore::Release(RequestId request) {
  auto it =
      entries_.lower_bound({request, std::numeric_limits<int32_t>::min()});
  while (it != entries_.end() && it->first.first == request) {
    it = Drop(it);
  }
}

std::map<HiddenStateStore::Key, HiddenStateStore::Entry>::iterator
HiddenStateStore::Drop(std::map<Key, Entry>::iterator it) {
  Recycle(std::move(it->second.state));
  auto next = std::next(it);
  std::map<Key, Entry>::node_type node = entries_.extract(it);
  if (spare_nodes_.size() < kMaxSpareNodes) {
    Entry& spare = node.mapped();  // its state is empty: moved out above
    spare.num_tokens = 0;
    spare.loops_done = 0;
    spare.exit_state = false;
    spare_nodes_.push_back(std::move(node));
  }
  return next;
}

int64_t HiddenStateStore::bytes() const {
  int64_t total = 0;
  for (const auto& [key, entry] : entries_) {
    total += static_cast<int64_t>(entry.state.size_bytes());
  }
  return total;
}

void HiddenStateStore::Recycle(Tensor tensor) {
  if (tensor.empty()) return;
  const int64_t size = static_cast<int64_t>(tensor.size_bytes());
  if (free_bytes_ + size > max_free_bytes_) return;  // freed here
  std::vector<Tensor>& pool = free_[tensor.dim(0)];
  if (pool.size() >= kMaxFreePerSize) return;
  pool.push_back(std::move(tensor));
  free_bytes_ += size;
}

}  // namespace strata
