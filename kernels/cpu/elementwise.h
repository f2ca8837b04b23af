// Token-wise element ops of the forward pass: residual add, bias add,
// SwiGLU's silu(gate) * up, RMSNorm, row softmax and the embedding gather.
//
// Every output element depends only on its own row, and the one reduction
// (RMSNorm's sum of squares) uses the fixed-order dot of kernels/cpu/simd.h,
// so all of these are batch invariant. Work is split across the pool by rows.
#ifndef STRATA_KERNELS_CPU_ELEMENTWISE_H_
#define STRATA_KERNELS_CPU_ELEMENTWISE_H_

#include <cstdint>
#include <span>

#include "kernels/cpu/kernel_context.h"

namespace strata::cpu {

// x[i] += y[i].  x, y: [count]
void Add(const KernelContext& ctx, const float* y, int64_t count, float* x);

// x[i][j] += bias[j].  x: [n, m], bias: [m]
void AddBias(const KernelContext& ctx, const float* bias, int64_t n, int64_t m,
             float* x);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
// gate, up, out: [count] (out may alias gate or up)
void SiluMul(const KernelContext& ctx, const float* gate, const float* up,
             int64_t count, float* out);

// out[i][j] = weight[j] * (x[i][j] / sqrt(mean_j(x[i][j]^2) + eps)), the
// Llama RMSNorm with the Hugging Face operation order.
// x, out: [n, h] (may alias), weight: [h]
void RmsNorm(const KernelContext& ctx, const float* x, const float* weight,
             int64_t n, int64_t h, float eps, float* out);

// Softmax over each row, in place: x[i][j] = exp(x[i][j] - max_i) / sum_i.
// x: [n, m]
void Softmax(const KernelContext& ctx, int64_t n, int64_t m, float* x);

// out[i] = table[ids[i]]. The caller guarantees 0 <= ids[i] < vocab.
// table: [vocab, h], ids: [n], out: [n, h]
void EmbeddingGather(const KernelContext& ctx, const float* table, int64_t h,
                     std::span<const int32_t> ids, float* out);

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_ELEMENTWISE_H_
