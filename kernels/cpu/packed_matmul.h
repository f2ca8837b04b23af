// PackedMatMul: out = x * W^T for a Linear weight repacked once, at load
// time, into column panels, so that the inner loop broadcasts one element of
// x and multiplies it into a whole vector of output columns.
//
// Why: MatMul (matmul.h) computes every output as a lane-split dot product
// and ends each one with a horizontal sum; with 16 concurrent sequences that
// tail, and the two loads per multiply-add, keep a 2-core AVX-512 machine at
// about a third of its peak. Here each multiply-add needs one W load shared by
// R rows and one broadcast shared by C panels, and no horizontal sums.
//
// Layout: W [m, k] (Hugging Face Linear) becomes ceil(m / 16) panels; panel j
// holds columns 16j..16j+15 as [k][16] (column c of the panel at p * 16 + c),
// the last panel zero-padded.
//
// Batch invariance: out[i][j] is always acc = fma(x[i][p], w[j][p], acc) for
// p = 0, 1, ..., k-1 from acc = 0, one rounding per step. Row and column
// tiling, threads and the batch size only decide which outputs run together.
// The scalar, AVX2 and AVX-512 variants perform the same fused operations in
// the same order, so they agree bit for bit with each other as well.
#ifndef STRATA_KERNELS_CPU_PACKED_MATMUL_H_
#define STRATA_KERNELS_CPU_PACKED_MATMUL_H_

#include <cstdint>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// Output columns per panel.
inline constexpr int64_t kPanelWidth = 16;

// Elements a packed [m, k] weight takes.
int64_t PackedWeightSize(int64_t m, int64_t k);

// Repacks w [m, k] (row-major) into `packed` [PackedWeightSize(m, k)].
void PackWeight(const float* w, int64_t m, int64_t k, float* packed);

// out[i][j] = sum_p x[i][p] * w[j][p], w given packed by PackWeight.
//   x: [n, k], out: [n, m]
void PackedMatMul(const KernelContext& ctx, const float* x, const float* packed,
                  int64_t n, int64_t m, int64_t k, float* out);

// out[i][j] += sum_p x[i][p] * w[j][p]: the sum exactly as PackedMatMul
// computes it, then one addition to out, so the bits are those of
// PackedMatMul into a temporary added to out afterwards, without the
// temporary's writes and reads (a LoRA update adds a small product to a
// projection's output; engine/lora.h).
void PackedMatMulAdd(const KernelContext& ctx, const float* x,
                     const float* packed, int64_t n, int64_t m, int64_t k,
                     float* out);

// Two products against one-panel weights (m <= 16) over the same k, for the
// rows of two segments at once (n0 + n1 <= 8 rows): out0 = x0 W0^T
// [n0, m] and out1 = x1 W1^T [n1, m], each bit for bit PackedMatMul's (every
// output the same chain from 0). Why: a few rows against one panel are one
// accumulator chain each, too few to cover the multiply-add's latency, so a
// segment of 3 rows costs what 8 do; a decode step whose rows sit at two
// loops runs each loop's LoRA A-product (engine/lora.h) as such a segment.
// In one register tile the two segments' chains fill the pipes together.
// On the calling thread; with other shapes or without AVX-512 it runs the
// two products one after the other (the same bits).
void PackedMatMulPair(Isa isa, const float* x0, int64_t n0,
                      const float* packed0, const float* x1, int64_t n1,
                      const float* packed1, int64_t m, int64_t k, float* out0,
                      float* out1);

// bfloat16 panels, for weights that are bfloat16 values (most checkpoints):
// half the memory and half the bytes a memory-bound decode step reads. The
// kernels widen each element to the float it is exactly, so the results
// equal PackedMatMul's on the same weights bit for bit.
//
// Whether every w[i] is a bfloat16 value (its low 16 bits are zero).
bool IsBf16Exact(const float* w, int64_t count);
// Repacks w [m, k] (bfloat16 values) into `packed` [PackedWeightSize(m, k)]
// 16-bit elements (the upper halves of the floats).
void PackWeightBf16(const float* w, int64_t m, int64_t k, uint16_t* packed);
void PackedMatMul(const KernelContext& ctx, const float* x,
                  const uint16_t* packed, int64_t n, int64_t m, int64_t k,
                  float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_PACKED_MATMUL_H_
