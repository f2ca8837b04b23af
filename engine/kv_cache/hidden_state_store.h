// HiddenStateStore: the residual-stream states a recursive model keeps
// between steps (docs/engine.md, "Hidden-state store").
//
// A recursive item that stops before its last loop (WorkItem::loop_end < N
// without exiting), or that exits early under the recompute KV policy,
// leaves its tokens' hidden state here; a later item of the same request and
// positions continues from it (loop_begin > 0). Entries are keyed by
// (request id, start position) and hold [num_tokens, hidden] f32 on the
// backend.
//
// Lifetime: created or overwritten by the step that ran the loops; erased by
// the step that finishes those positions (reaches loop N-1, or exits under
// propagate); every entry of a request is erased by Release (the scheduler's
// StepExecutor::ReleaseState on finish, cancel and preemption). Freed
// tensors are recycled by row count, so a steady depth-wise decode does not
// allocate each step; the recycled tensors are bounded in bytes
// (max_free_bytes), since prompts of every length leave a tensor of their
// own size that another prompt rarely reuses (a 30-minute soak's RSS crept
// about 150 bytes per request while they were bounded only per size).
//
// Threading: not thread-safe; the engine thread owns it.
#ifndef STRATA_ENGINE_KV_CACHE_HIDDEN_STATE_STORE_H_
#define STRATA_ENGINE_KV_CACHE_HIDDEN_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/step.h"

namespace strata {

class HiddenStateStore {
 public:
  struct Entry {
    Tensor state;            // [num_tokens, hidden] f32
    int32_t num_tokens = 0;  // rows of `state`
    int32_t loops_done = 0;  // loops the state has been through
    // An early exit's state kept for a recompute kv_fill item (only such an
    // item may continue it).
    bool exit_state = false;
  };

  static constexpr int64_t kDefaultMaxFreeBytes = 8 << 20;

  // `backend` must outlive the store. hidden: the model's hidden size.
  // max_free_bytes: recycled tensors kept at most (beyond, they are freed).
  HiddenStateStore(Backend* backend, int64_t hidden,
                   int64_t max_free_bytes = kDefaultMaxFreeBytes);
  HiddenStateStore(const HiddenStateStore&) = delete;
  HiddenStateStore& operator=(const HiddenStateStore&) = delete;

  // nullptr when absent.
  const Entry* Find(RequestId request, int32_t start_position) const;

  // The entry for (request, start_position) with a state tensor of
  // num_tokens rows (created, or reused when it exists; the caller
  // overwrites the state and sets the fields). RESOURCE_EXHAUSTED when the
  // backend is out of memory.
  absl::StatusOr<Entry*> Put(RequestId request, int32_t start_position,
                             int32_t num_tokens);

  void Erase(RequestId request, int32_t start_position);
  // Erases every entry of `request`.
  void Release(RequestId request);

  size_t size() const { return entries_.size(); }
  // Bytes held by live entries (not counting recycled tensors).
  int64_t bytes() const;
  // Bytes of the recycled tensors kept for reuse (<= max_free_bytes).
  int64_t free_bytes() const { return free_bytes_; }

 private:
  using Key = std::pair<RequestId, int32_t>;  // (request, start position)

  void Recycle(Tensor tensor);
  // Erases the entry at `it` (its tensor recycled, its node kept for the
  // next Put); returns the iterator after it.
  std::map<Key, Entry>::iterator Drop(std::map<Key, Entry>::iterator it);

  Backend* backend_;  // not owned
  int64_t hidden_;
  int64_t max_free_bytes_;
  int64_t free_bytes_ = 0;
  // Ordered so that Release is one range erase.
  std::map<Key, Entry> entries_;
  // Freed state tensors by row count, reused by Put.
  absl::flat_hash_map<int64_t, std::vector<Tensor>> free_;
  // Erased entries' map nodes, reused by Put (no allocation per token).
  std::vector<std::map<Key, Entry>::node_type> spare_nodes_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_KV_CACHE_HIDDEN_STATE_STORE_H_
