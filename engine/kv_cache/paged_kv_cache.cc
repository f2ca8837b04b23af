#include "engine/kv_cache/paged_kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace strata {

int64_t PagedKvCache::BytesPerBlock(const ModelConfig& config,
                                    int32_t block_size, int64_t element_bytes) {
  return 2LL * config.num_kv_layers() * block_size *
         config.num_key_value_heads * config.head_dim * element_bytes;
}

absl::StatusOr<PagedKvCache> PagedKvCache::Create(Backend* backend,
                                                  const ModelConfig& config,
                                                  int32_t block_size,
                                                  int32_t num_blocks) {
  if (block_size <= 0 || num_blocks <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size (", block_size, ") and num_blocks (",
                     num_blocks, ") must be positive"));
  }
  // Physical KV slots (block * num_loops + loop) * block_size + offset are
  // int32 in the ops.
  if (static_cast<int64_t>(num_blocks) * config.num_loops * block_size >
      std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_blocks (", num_blocks, ") * num_loops (", config.num_loops,
        ") * block_size (", block_size, ") exceeds int32 KV slots"));
  }
  PagedKvCache cache;
  cache.backend_ = backend;
  cache.num_hidden_layers_ = config.num_hidden_layers;
  cache.num_loops_ = config.num_loops;
  cache.num_kv_heads_ = config.num_key_value_heads;
  cache.head_dim_ = config.head_dim;
  cache.block_size_ = block_size;
  cache.num_blocks_ = num_blocks;
  const std::vector<int64_t> shape = {num_blocks, config.num_loops,
                                      config.num_key_value_heads, block_size,
                                      config.head_dim};
  const std::vector<int64_t> view_shape = {
      static_cast<int64_t>(num_blocks) * config.num_loops,
      config.num_key_value_heads, block_size, config.head_dim};
  cache.layers_.resize(config.num_hidden_layers);
  for (Layer& layer : cache.layers_) {
    ASSIGN_OR_RETURN(layer.k,
                     backend->Allocate(backend->kv_cache_type(), shape));
    ASSIGN_OR_RETURN(layer.v,
                     backend->Allocate(backend->kv_cache_type(), shape));
    layer.k_view = Tensor(layer.k.data(), layer.k.type(), view_shape, nullptr);
    layer.v_view = Tensor(layer.v.data(), layer.v.type(), view_shape, nullptr);
  }
  return cache;
}

absl::Status PagedKvCache::CopyBlocks(std::span<const BlockCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  for (size_t i = 0; i < copies.size(); ++i) {
    const BlockCopy& copy = copies[i];
    if (copy.src < 0 || copy.src >= num_blocks_ || copy.dst < 0 ||
        copy.dst >= num_blocks_ || copy.src == copy.dst) {
      return absl::InvalidArgumentError(
          absl::StrCat("block copy ", i, " (", copy.src, " -> ", copy.dst,
                       ") needs two different block ids in [0, ", num_blocks_,
                       "): scheduler bug"));
    }
  }
  std::vector<Tensor*> caches;
  caches.reserve(2 * layers_.size());
  for (Layer& layer : layers_) {
    caches.push_back(&layer.k);
    caches.push_back(&layer.v);
  }
  backend_->CopyKvBlocks(copies, caches);
  return absl::OkStatus();
}

absl::Status PagedKvCache::ReadKv(int32_t kv_layer,
                                  std::span<const int32_t> block_table,
                                  int32_t position, std::vector<float>* k,
                                  std::vector<float>* v) const {
  const int32_t bs = block_size_;
  if (kv_layer < 0 || kv_layer >= num_hidden_layers_ * num_loops_ ||
      position < 0 ||
      position / bs >= static_cast<int32_t>(block_table.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no KV entry for kv layer ", kv_layer, " at position ", position));
  }
  const Layer& layer = layers_[kv_layer % num_hidden_layers_];
  if (layer.k.type() != ElementType::kF32) {
    return absl::UnimplementedError("ReadKv reads f32 caches only");
  }
  const int32_t loop = kv_layer / num_hidden_layers_;
  const int64_t phys =
      static_cast<int64_t>(block_table[position / bs]) * num_loops_ + loop;
  const int64_t kv_heads = num_kv_heads_;
  const int64_t head_dim = head_dim_;
  for (auto [cache, dst] : {std::pair{&layer.k, k}, std::pair{&layer.v, v}}) {
    std::vector<float> all(static_cast<size_t>(cache->num_elements()));
    RETURN_IF_ERROR(backend_->CopyToHost(*cache, all));
    dst->resize(static_cast<size_t>(kv_heads * head_dim));
    for (int64_t h = 0; h < kv_heads; ++h) {
      const float* src =
          all.data() + ((phys * kv_heads + h) * bs + position % bs) * head_dim;
      std::copy(src, src + head_dim, dst->data() + h * head_dim);
    }
  }
  return absl::OkStatus();
}

}  // namespace strata
