// Bf16MatMul: out = x * W^T with bfloat16 weights and each row of x rounded
// to bfloat16, multiplied pairwise by vdpbf16ps (AVX-512 BF16) with f32
// accumulation: twice the multiply-adds per instruction of the f32 panels
// (PackedMatMul), for batched rows where the product is compute-bound.
//
// Numerics: x[i][p] is rounded to the nearest bfloat16 (ties to even;
// subnormals flushed to zero, as vcvtneps2bf16 does). Per output, from
// acc = 0, for each pair q = 0, 1, ..., kp/2 - 1 (k padded with a zero to
// kp, even):
//   acc = (acc + x[2q+1] * w[2q+1]) + x[2q] * w[2q]
// each product exact in f32 (8-bit by 8-bit significands), each addition
// rounded to nearest even with subnormal results flushed to zero -- what
// vdpbf16ps does (checked against this formula on Zen 4 by the tests). The
// scalar variant computes the same, so the variants agree bit for bit, and
// the order depends on k alone: batch invariant.
//
// Layout: ceil(m / 16) panels; panel j holds [kp / 2][16][2] bfloat16: for
// each pair of inputs, 2 values per column (one 32-bit lane of vdpbf16ps).
#ifndef STRATA_KERNELS_CPU_BF16_MATMUL_H_
#define STRATA_KERNELS_CPU_BF16_MATMUL_H_

#include <cstdint>

#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// Whether this CPU has AVX-512 BF16 (vdpbf16ps).
bool Bf16DotSupported();

// Elements (uint16_t) of the packed panels of an [m, k] weight.
int64_t Bf16PairPackedSize(int64_t m, int64_t k);

// Packs w [m, k] (row-major, row = output channel), rounding each value to
// the nearest bfloat16 (exact for bfloat16-valued checkpoints).
void PackWeightBf16Pairs(const float* w, int64_t m, int64_t k,
                         uint16_t* packed);

// The nearest bfloat16 of v as above (exposed for the tests).
uint16_t RoundToBf16(float v);

// out[i][j] as above. x: [n, k], out: [n, m]. avx512: run the vdpbf16ps
// variant (requires Bf16DotSupported()); otherwise the scalar one.
void Bf16MatMul(const KernelContext& ctx, bool avx512, const float* x,
                const uint16_t* packed, int64_t n, int64_t m, int64_t k,
                float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_BF16_MATMUL_H_
