// Int8MatMul: out = x * W^T with W quantized to int8 once, at load, and each
// row of x quantized to int8 on the fly; the products accumulate in int32
// and are rescaled to f32 once per output.
//
// Why: a batch-1 decode step on the CPU streams every weight once per token,
// so int8 panels halve the bytes (and the time) of bfloat16 ones; batched,
// vpdpbusd (AVX-512 VNNI / AVX-VNNI) does 4 multiply-adds per 32-bit lane
// where an f32 FMA does one.
//
// Quantization (symmetric, absmax / 127):
//   W: per output channel j: w_scale[j] = max_p |W[j][p]| / 127,
//      wq[j][p] = round_half_even(W[j][p] / w_scale[j]) in [-127, 127].
//   x: per row i, at every call: x_scale[i] = max_p |x[i][p]| / 127,
//      xq[i][p] = round_half_even(x[i][p] * (127 / max_p |x[i][p]|)).
//   out[i][j] = float(sum_p xq[i][p] * wq[j][p]) * (x_scale[i] * w_scale[j]).
// A row of x holding a NaN or an infinity gives NaN outputs.
//
// Per-group scales (group_size G > 0, a multiple of 4): the inputs of each
// output channel are cut into groups of G (the last one may be short), each
// with its own scale w_scale[g][j] = max_{p in g} |W[j][p]| / 127, and
//   out[i][j] = x_scale[i] * acc,  acc = fma chain over g = 0, 1, ... of
//               float(sum_{p in g} xq[i][p] * wq[j][p]) * w_scale[g][j],
//               from 0 (each group's sum is an exact int32 and, for G <= 1024,
//               exactly a float; so every variant still gives the same bits).
// A weight with a few large values then costs only its own group precision.
// It reads 4 / G more bytes per weight (3% at G = 128) and does one more
// convert and fma per group and output.
//
// Layout: ceil(m / 16) panels of 16 output channels; k is padded with zeros
// to kp = a multiple of 4; panel j holds [kp / 4][16][4] bytes: for each
// group of 4 consecutive inputs, 4 bytes per column -- the 32-bit lane
// vpdpbusd multiplies by 4 broadcast bytes of x. The bytes are wq + 128
// (unsigned: vpdpbusd's unsigned operand is the weights, so that x is the
// signed broadcast one, folded into the instruction); the kernels subtract
// 128 * sum_p xq[i][p] from the sums.
//
// Batch invariance and agreement across ISAs: the sum is an exact int32 (no
// rounding, so its order does not matter; |sum| <= kp * 127 * 255 < 2^31
// for k < 66000), and the quantization of x and the final conversion and
// two multiplications are the same correctly rounded operations in every
// variant. So every variant gives the same bits, and a row's outputs do not
// depend on the other rows, the batch size or the threads.
#ifndef STRATA_KERNELS_CPU_INT8_MATMUL_H_
#define STRATA_KERNELS_CPU_INT8_MATMUL_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// The integer dot-product variants. kAvx2 widens bytes to 16 bits and uses
// vpmaddwd (for CPUs without VNNI); kAvxVnni is 256-bit vpdpbusd (VEX);
// kAvx512Vnni is 512-bit vpdpbusd (EVEX).
enum class Int8Isa { kScalar, kAvx2, kAvxVnni, kAvx512Vnni };

std::string_view Int8IsaName(Int8Isa isa);
bool Int8IsaSupported(Int8Isa isa);
// Every supported variant, scalar first.
std::vector<Int8Isa> SupportedInt8Isas();
// The variant run for KernelContext::isa: the widest supported one whose
// vectors are no wider than that ISA's (kAvx512 -> kAvx512Vnni, else
// kAvxVnni, else kAvx2; kAvx2 -> kAvxVnni, else kAvx2; kScalar -> kScalar).
Int8Isa Int8IsaFor(Isa isa);

// k padded to a multiple of 4.
int64_t Int8PaddedK(int64_t k);
// Output channels padded to whole panels (the length of the scale and
// column-sum arrays).
int64_t Int8PaddedRows(int64_t m);
// Bytes of the packed int8 panels of an [m, k] weight.
int64_t Int8PackedBytes(int64_t m, int64_t k);

// Scale groups of k inputs: 1 per channel (group_size 0), else
// ceil(k / group_size).
int64_t Int8NumGroups(int64_t k, int32_t group_size);
// Floats of an Int8Panels' scales: Int8NumGroups(k, group_size) *
// Int8PaddedRows(m).
int64_t Int8ScaleCount(int64_t m, int64_t k, int32_t group_size);
// Whether the kernels take this group size: 0 (per channel) or a positive
// multiple of 4 up to 1024.
bool Int8GroupSizeValid(int32_t group_size);

// A quantized, packed weight (see the layout above).
struct Int8Panels {
  const uint8_t* q;  // [Int8PackedBytes(m, k)] wq + 128
  // [Int8PaddedRows(m) / 16][Int8NumGroups(k, group_size)][16] w_scale:
  // per panel, its 16 channels' scales group after group, so a tile reads
  // them as one forward stream beside the panel's bytes, not one line per
  // group a whole row of scales apart. 0 in the padding.
  const float* scales;
  int32_t group_size = 0;  // 0: one scale per output channel
};

// Quantizes w [m, k] (row-major, row = output channel) into the two arrays
// of Int8Panels (sizes as documented there), with scales per group of
// group_size inputs (0: per channel; Int8GroupSizeValid).
void QuantizeWeightInt8(const float* w, int64_t m, int64_t k, uint8_t* q,
                        float* scales, int32_t group_size = 0);

// x_scale of a row and its quantized values: xq [Int8PaddedK(k)], zero
// past k. Exposed for the tests; Int8MatMul calls it for every row.
float QuantizeRowInt8(Int8Isa isa, const float* x, int64_t k, int8_t* xq);

// out[i][j] as above. x: [n, k], out: [n, m]. The variant is
// Int8IsaFor(ctx.isa), or `isa` (which must be supported).
void Int8MatMul(const KernelContext& ctx, const float* x, const Int8Panels& w,
                int64_t n, int64_t m, int64_t k, float* out);
void Int8MatMul(const KernelContext& ctx, Int8Isa isa, const float* x,
                const Int8Panels& w, int64_t n, int64_t m, int64_t k,
                float* out);

// LLM.int8() (Dettmers et al. 2022) on the same panels, the scheme of the
// CUDA backend (kernels/cuda/int8_matmul.h) decided per row rather than per
// batch, so that it stays batch invariant: the outlier columns of row i are
// those with |x[i][p]| >= threshold (the first max_outliers of them, in
// column order); they are zeroed before the row is quantized (so its
// x_scale comes from the other columns), and added back in f32 against the
// dequantized weights:
//   out[i][j] = <Int8MatMul of the row without its outliers>
//               + o[j] * w_scale[j],
//   o[j] = fma chain over the outlier columns c in increasing order of
//          x[i][c] * float(wq[j][c]), from 0.
// With per-group scales: out[i][j] = <Int8MatMul of the row without its
// outliers> + o[j], o[j] = fma chain over c of x[i][c] * d[j][c], d the
// dequantized weight float(wq[j][c]) * w_scale[group of c][j].
// A row without outliers gets exactly Int8MatMul's result.
void Int8MatMulWithOutliers(const KernelContext& ctx, Int8Isa isa,
                            const float* x, const Int8Panels& w, int64_t n,
                            int64_t m, int64_t k, float threshold,
                            int32_t max_outliers, float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_INT8_MATMUL_H_
