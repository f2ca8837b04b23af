// Copy-on-write of paged KV blocks on the GPU (vLLM's copy_blocks): before a
// step's forward pass, block src of every KV cache tensor is copied over
// block dst, so a sequence forked from an n > 1 request gets its own copy of
// the prompt's partly filled last block before it writes into it.
#ifndef STRATA_KERNELS_CUDA_KV_BLOCK_COPY_H_
#define STRATA_KERNELS_CUDA_KV_BLOCK_COPY_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::cuda {

struct BlockCopyPair {
  int32_t src = 0;
  int32_t dst = 0;
};

// In every cache c of `caches`, copies block pairs[i].src over block
// pairs[i].dst. The pairs of one launch run concurrently: no dst may repeat
// or be another pair's src (the caller splits dependent copies into
// separate launches, which the stream orders).
//   caches: [num_caches] device array of device pointers, each cache a run
//           of blocks of block_bytes bytes (256-byte aligned base)
//   pairs:  [num_pairs] device, ids in range of every cache
cudaError_t LaunchCopyKvBlocks(void* const* caches, int64_t num_caches,
                               const BlockCopyPair* pairs, int64_t num_pairs,
                               int64_t block_bytes, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_KV_BLOCK_COPY_H_
