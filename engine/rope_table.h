// The model's rotary-embedding table: cos and sin of every position times
// every frequency, computed once at load on the host and uploaded to the
// backend, whose RoPE op only reads it (kernels/cpu/rope.h,
// kernels/cuda/rope.h). Model math, not a kernel: it must match PyTorch's
// float rounding of the angle, whatever device applies it.
#ifndef STRATA_ENGINE_ROPE_TABLE_H_
#define STRATA_ENGINE_ROPE_TABLE_H_

#include <cstdint>
#include <span>

namespace strata {

// Fills table [max_positions, 2 * inv_freq.size()]: row p holds cos(p * f_i)
// for every i, then sin(p * f_i). The angle is rounded to f32 before cos/sin,
// as PyTorch computes it (f32 inv_freq times f32 position).
// inv_freq: [head_dim / 2]
void BuildRopeTable(std::span<const float> inv_freq, int64_t max_positions,
                    float* table);

}  // namespace strata

#endif  // STRATA_ENGINE_ROPE_TABLE_H_
