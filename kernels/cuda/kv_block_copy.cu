// KV block copies for copy-on-write. Why written this way: a copy is pure
// memory traffic and there are few per step (one per forked sequence), so
// one launch covers every (pair, cache) with one CTA each, moving 16-byte
// words when the block size allows. Napkin figure: Llama-3-8B in bf16 with
// 16-token blocks has 32 KiB per block per tensor and 64 tensors, so one
// copied block reads and writes 2 MiB each: ~1.5 us at ~3 TB/s. At the
// handful of copies per step this is launch-bound, as the other small ops.
#include <cstdint>

#include "kernels/cuda/kv_block_copy.h"

namespace strata::cuda {
namespace {

// ---- kernels ----

// CTA (blockIdx.x, blockIdx.y) = (pair, cache).
template <typename Word>
__global__ void CopyKvBlocksKernel(void* const* __restrict__ caches,
                                   const BlockCopyPair* __restrict__ pairs,
                                   int64_t words_per_block) {
  const BlockCopyPair pair = pairs[blockIdx.x];
  Word* cache = static_cast<Word*>(caches[blockIdx.y]);
  const Word* src = cache + static_cast<int64_t>(pair.src) * words_per_block;
  Word* dst = cache + static_cast<int64_t>(pair.dst) * words_per_block;
  for (int64_t j = threadIdx.x; j < words_per_block; j += blockDim.x) {
    dst[j] = src[j];
  }
}

// ---- launchers ----

constexpr int kThreads = 256;

template <typename Word>
cudaError_t Launch(void* const* caches, int64_t num_caches,
                   const BlockCopyPair* pairs, int64_t num_pairs,
                   int64_t block_bytes, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(num_pairs),
                  static_cast<unsigned>(num_caches));
  CopyKvBlocksKernel<Word><<<grid, kThreads, 0, stream>>>(
      caches, pairs, block_bytes / static_cast<int64_t>(sizeof(Word)));
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchCopyKvBlocks(void* const* caches, int64_t num_caches,
                               const BlockCopyPair* pairs, int64_t num_pairs,
                               int64_t block_bytes, cudaStream_t stream) {
  if (num_caches == 0 || num_pairs == 0 || block_bytes == 0) {
    return cudaSuccess;
  }
  if (num_caches > 65535 || num_pairs > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  // Cache bases are cudaMalloc-aligned, so a block's alignment is that of
  // block_bytes.
  if (block_bytes % 16 == 0) {
    return Launch<uint4>(caches, num_caches, pairs, num_pairs, block_bytes,
                         stream);
  }
  if (block_bytes % 4 == 0) {
    return Launch<uint32_t>(caches, num_caches, pairs, num_pairs, block_bytes,
                            stream);
  }
  return Launch<unsigned char>(caches, num_caches, pairs, num_pairs,
                               block_bytes, stream);
}

}  // namespace strata::cuda
