#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "kernels/cpu/simd.h"

namespace strata::cpu {
namespace {

inline __attribute__((always_inline)) void RotateRowBody(const float* cos_sin,
                                                         int64_t num_heads,
                                                         int64_t head_dim,
                                                         float* x) {
  const int64_t half = head_dim / 2;
  const float* cos = cos_sin;
  const float* sin = cos_sin + half;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* lo = x + h * head_dim;
    float* hi = lo + half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = lo[i];
      const float b = hi[i];
      lo[i] = a * cos[i] - b * sin[i];
      hi[i] = b * cos[i] + a * sin[i];
    }
  }
}

void RotateRowScalar(const float* cos_sin, int64_t num_heads, int64_t head_dim,
                     float* x) {
  RotateRowBody(cos_sin, num_heads, head_dim, x);
}

#if STRATA_CPU_X86
STRATA_TARGET_AVX2 void RotateRowAvx2(const float* cos_sin, int64_t num_heads,
                                      int64_t head_dim, float* x) {
  RotateRowBody(cos_sin, num_heads, head_dim, x);
}
STRATA_TARGET_AVX512 void RotateRowAvx512(const float* cos_sin,
                                          int64_t num_heads, int64_t head_dim,
                                          float* x) {
  RotateRowBody(cos_sin, num_heads, head_dim, x);
}
#endif

}  // namespace

void ApplyRope(const KernelContext& ctx, const float* table,
               std::span<const int32_t> positions, int64_t num_heads,
               int64_t head_dim, float* x) {
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t width = num_heads * head_dim;
  constexpr int64_t kRowsPerTask = 16;
  ctx.ParallelFor((n + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t t) {
    const int64_t end = std::min(n, (t + 1) * kRowsPerTask);
    for (int64_t r = t * kRowsPerTask; r < end; ++r) {
      const float* cos_sin = table + positions[r] * head_dim;
      float* row = x + r * width;
      switch (ctx.isa) {
#if STRATA_CPU_X86
        case Isa::kAvx512:
          RotateRowAvx512(cos_sin, num_heads, head_dim, row);
          break;
        case Isa::kAvx2:
          RotateRowAvx2(cos_sin, num_heads, head_dim, row);
          break;
#endif
        default:
          RotateRowScalar(cos_sin, num_heads, head_dim, row);
          break;
      }
    }
  });
}

}  // namespace strata::cpu
