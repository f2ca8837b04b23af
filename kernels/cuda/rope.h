// Rotary position embedding on the GPU, HF rotate_half layout, from the same
// precomputed cos/sin table as the CPU (kernels/cpu/rope.h), so the rotation
// angles are bit-identical and only the f32 multiply-adds may round
// differently (FMA contraction on the device).
#ifndef STRATA_KERNELS_CUDA_ROPE_H_
#define STRATA_KERNELS_CUDA_ROPE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::cuda {

// Rotates every head of every row in place.
//   table:     [max_positions, head_dim] f32 (cos of the head_dim/2
//              frequencies, then sin)
//   positions: [n] device, each < max_positions
//   x:         [n, num_heads * head_dim] f32
cudaError_t LaunchRope(const float* table, const int32_t* positions, int64_t n,
                       int64_t num_heads, int64_t head_dim, float* x,
                       cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_ROPE_H_
