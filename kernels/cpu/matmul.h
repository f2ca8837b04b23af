// MatMul: out = x * W^T with W stored row-major as Hugging Face stores a
// Linear weight ([out_features, in_features]).
//
// Batch invariance: out[i][j] is always one dot product of x[i] and W[j] in
// a fixed order that depends only on k (the lane split of the ISA variant,
// then a fixed horizontal sum). Tiling over rows and columns and splitting
// columns/rows across threads only decide WHICH dots run together, never
// how one is summed, so row i is bit-identical whether it is computed alone
// or in a batch of any size, with any number of threads.
//
// Speed: a register-tiled micro-kernel (4x4 outputs per pass for AVX-512,
// 4x2 for AVX2) reuses each loaded x and W vector several times; work is
// split into (row block, column block) tasks with the column block sized to
// stay in L2. For decode (n small) every row tile passes over a W block while
// it is cache-resident, so W streams from memory once for all rows.
#ifndef STRATA_KERNELS_CPU_MATMUL_H_
#define STRATA_KERNELS_CPU_MATMUL_H_

#include <cstdint>

#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// out[i][j] = sum_p x[i][p] * w[j][p].
//   x:   [n, k]
//   w:   [m, k]
//   out: [n, m]
void MatMul(const KernelContext& ctx, const float* x, const float* w, int64_t n,
            int64_t m, int64_t k, float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_MATMUL_H_
