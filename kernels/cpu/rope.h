// Rotary position embedding in the Hugging Face "rotate_half" layout: within
// each head, element i is paired with element i + head_dim/2 (not the
// interleaved (2i, 2i+1) layout of the original paper).
//
//   out[i]        = x[i] * cos(pos * f_i) - x[i + d/2] * sin(pos * f_i)
//   out[i + d/2]  = x[i + d/2] * cos(pos * f_i) + x[i] * sin(pos * f_i)
//
// The cos/sin values come from a table precomputed once per model for every
// position, so applying RoPE is pure element work (batch invariant).
#ifndef STRATA_KERNELS_CPU_ROPE_H_
#define STRATA_KERNELS_CPU_ROPE_H_

#include <cstdint>
#include <span>

#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// Rotates every head of every row in place.
//   table:     [max_positions, head_dim]: row p holds cos(p * f_i) for
//              every i, then sin(p * f_i) (engine/rope_table.h builds it)
//   positions: [n], each < max_positions (the caller checks)
//   x:         [n, num_heads * head_dim]
void ApplyRope(const KernelContext& ctx, const float* table,
               std::span<const int32_t> positions, int64_t num_heads,
               int64_t head_dim, float* x);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_ROPE_H_
