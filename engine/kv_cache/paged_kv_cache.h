// PagedKvCache: the K/V memory of every layer (and, for recursive models,
// every loop) of a model, as fixed-size blocks that sequences reach through
// block tables. The scheduler's BlockManager decides which blocks a
// sequence owns; this class only holds the tensors, copies blocks
// (copy-on-write) and hands the attention ops their views.
//
// Layout, per layer (K and V alike):
//   [num_blocks, num_loops, num_kv_heads, block_size, head_dim]
// so row b holds every loop's entries of scheduler block b (copying a block
// copies all loops). Attention sees the same memory as
//   [num_blocks * num_loops, num_kv_heads, block_size, head_dim]:
// block b of loop l is physical block b * num_loops + l. num_loops = 1 for
// a plain model.
//
// Threading: not thread-safe; the engine thread owns it.
#ifndef STRATA_ENGINE_KV_CACHE_PAGED_KV_CACHE_H_
#define STRATA_ENGINE_KV_CACHE_PAGED_KV_CACHE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/loader/model_config.h"
#include "engine/step.h"

namespace strata {

class PagedKvCache {
 public:
  // One layer's caches and the views the attention ops take.
  struct Layer {
    Tensor k;  // [num_blocks, num_loops, num_kv_heads, block_size, head_dim]
    Tensor v;
    Tensor k_view;  // [num_blocks * num_loops, num_kv_heads, block_size, hd]
    Tensor v_view;
  };

  PagedKvCache() = default;

  // Allocates num_blocks blocks for every layer on `backend` (which must
  // outlive the cache), in its kv_cache_type(). INVALID_ARGUMENT when the
  // block count or size is not positive or the physical slots overflow
  // int32 (the ops index them so).
  static absl::StatusOr<PagedKvCache> Create(Backend* backend,
                                             const ModelConfig& config,
                                             int32_t block_size,
                                             int32_t num_blocks);

  // Bytes one block takes: K and V of block_size tokens for every KV layer
  // (num_hidden_layers * num_loops), element_bytes per value.
  static int64_t BytesPerBlock(const ModelConfig& config, int32_t block_size,
                               int64_t element_bytes);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  Layer& layer(int32_t index) { return layers_[index]; }

  // Copy-on-write (StepPlan::block_copies): block src over block dst in
  // every layer's K and V, in order. INVALID_ARGUMENT, copying nothing,
  // when an id is outside [0, num_blocks) or src == dst.
  absl::Status CopyBlocks(std::span<const BlockCopy> copies);

  // K (after RoPE) and V of kv layer loop * num_hidden_layers + layer at
  // `position` through `block_table`, each [num_kv_heads * head_dim] (f32
  // caches only; for tests, which reach it through their peers).
  absl::Status ReadKv(int32_t kv_layer, std::span<const int32_t> block_table,
                      int32_t position, std::vector<float>* k,
                      std::vector<float>* v) const;

 private:
  Backend* backend_ = nullptr;  // not owned
  int32_t num_hidden_layers_ = 0;
  int32_t num_loops_ = 1;
  int32_t num_kv_heads_ = 0;
  int32_t head_dim_ = 0;
  int32_t block_size_ = 0;
  int32_t num_blocks_ = 0;
  std::vector<Layer> layers_;  // [num_hidden_layers]
};

}  // namespace strata

#endif  // STRATA_ENGINE_KV_CACHE_PAGED_KV_CACHE_H_
