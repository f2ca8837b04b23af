#include "engine/kv_cache/hidden_state_store.h"

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {
namespace {

// Recycled tensors kept per row count; beyond this they are freed.
constexpr size_t kMaxFreePerSize = 256;

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
  Entry& entry = entries_[{request, start_position}];
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
      entries_.erase({request, start_position});
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
  Recycle(std::move(it->second.state));
  entries_.erase(it);
}

void HiddenStateStore::Release(RequestId request) {
  auto it =
      entries_.lower_bound({request, std::numeric_limits<int32_t>::min()});
  while (it != entries_.end() && it->first.first == request) {
    Recycle(std::move(it->second.state));
    it = entries_.erase(it);
  }
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
