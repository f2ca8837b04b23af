#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_exp.h"

namespace strata::cpu {
namespace {

#define STRATA_ALWAYS_INLINE inline __attribute__((always_inline))

// Element loops are written once as always-inline bodies and instantiated in
// a function per ISA; the compiler vectorises each copy for its target.

STRATA_ALWAYS_INLINE void AddBody(const float* y, int64_t count, float* x) {
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

// silu(g) * up = g / (1 + exp(-g)) * up with kernels/cpu/simd_exp.h's
// exponential: the same bits in every variant (each step is one IEEE
// operation), and vectorised, unlike libm's expf.
inline float SiluMulOne(float g, float u) {
  return g / (1.0f + internal::ExpScalar(-g)) * u;
}

// out = weight * (x * inv_rms), the order of HF's LlamaRMSNorm.
STRATA_ALWAYS_INLINE void ScaleBody(const float* x, const float* weight,
                                    float inv_rms, int64_t h, float* out) {
  for (int64_t j = 0; j < h; ++j) out[j] = weight[j] * (x[j] * inv_rms);
}

void AddScalar(const float* y, int64_t count, float* x) {
  AddBody(y, count, x);
}
void SiluMulScalar(const float* gate, const float* up, int64_t count,
                   float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = SiluMulOne(gate[i], up[i]);
}
void RmsNormRowScalar(const float* x, const float* weight, int64_t h, float eps,
                      float* out) {
  const float ss = internal::DotScalar(x, x, h);
  const float inv_rms = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  ScaleBody(x, weight, inv_rms, h, out);
}

#if STRATA_CPU_X86
STRATA_TARGET_AVX2 void AddAvx2(const float* y, int64_t count, float* x) {
  AddBody(y, count, x);
}
STRATA_TARGET_AVX2 void SiluMulAvx2(const float* gate, const float* up,
                                    int64_t count, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = internal::ExpAvx2(_mm256_sub_ps(zero, g));
    _mm256_storeu_ps(out + i,
                     _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)),
                                   _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = SiluMulOne(gate[i], up[i]);
}
STRATA_TARGET_AVX2 void RmsNormRowAvx2(const float* x, const float* weight,
                                       int64_t h, float eps, float* out) {
  const float ss = internal::DotAvx2(x, x, h);
  const float inv_rms = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  ScaleBody(x, weight, inv_rms, h, out);
}
STRATA_TARGET_AVX512 void AddAvx512(const float* y, int64_t count, float* x) {
  AddBody(y, count, x);
}
STRATA_TARGET_AVX512 void SiluMulAvx512(const float* gate, const float* up,
                                        int64_t count, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = internal::ExpAvx512(_mm512_sub_ps(zero, g));
    _mm512_storeu_ps(out + i,
                     _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)),
                                   _mm512_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = SiluMulOne(gate[i], up[i]);
}
STRATA_TARGET_AVX512 void RmsNormRowAvx512(const float* x, const float* weight,
                                           int64_t h, float eps, float* out) {
  const float ss = internal::DotAvx512(x, x, h);
  const float inv_rms = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  ScaleBody(x, weight, inv_rms, h, out);
}
#endif

// Splits [0, count) into chunks of at least kMinChunk elements, at most one
// or a few per thread; element ops have no cross-element order to preserve.
constexpr int64_t kMinChunk = 16 << 10;

template <typename Fn>
void ForChunks(const KernelContext& ctx, int64_t count, Fn fn) {
  const int64_t threads = ctx.num_threads();
  const int64_t chunks = std::clamp<int64_t>(count / kMinChunk, 1, 4 * threads);
  const int64_t chunk = (count + chunks - 1) / chunks;
  ctx.ParallelFor(chunks, [&](int64_t c) {
    const int64_t begin = c * chunk;
    const int64_t end = std::min(count, begin + chunk);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace

void Add(const KernelContext& ctx, const float* y, int64_t count, float* x) {
  ForChunks(ctx, count, [&](int64_t begin, int64_t end) {
    switch (ctx.isa) {
#if STRATA_CPU_X86
      case Isa::kAvx512:
        return AddAvx512(y + begin, end - begin, x + begin);
      case Isa::kAvx2:
        return AddAvx2(y + begin, end - begin, x + begin);
#endif
      default:
        return AddScalar(y + begin, end - begin, x + begin);
    }
  });
}

void AddBias(const KernelContext& ctx, const float* bias, int64_t n, int64_t m,
             float* x) {
  const int64_t rows_per_task =
      std::max<int64_t>(1, kMinChunk / std::max<int64_t>(m, 1));
  const int64_t tasks = (n + rows_per_task - 1) / rows_per_task;
  ctx.ParallelFor(tasks, [&](int64_t t) {
    const int64_t end = std::min(n, (t + 1) * rows_per_task);
    for (int64_t i = t * rows_per_task; i < end; ++i) {
      switch (ctx.isa) {
#if STRATA_CPU_X86
        case Isa::kAvx512:
          AddAvx512(bias, m, x + i * m);
          break;
        case Isa::kAvx2:
          AddAvx2(bias, m, x + i * m);
          break;
#endif
        default:
          AddScalar(bias, m, x + i * m);
          break;
      }
    }
  });
}

void SiluMul(const KernelContext& ctx, const float* gate, const float* up,
             int64_t count, float* out) {
  ForChunks(ctx, count, [&](int64_t begin, int64_t end) {
    switch (ctx.isa) {
#if STRATA_CPU_X86
      case Isa::kAvx512:
        return SiluMulAvx512(gate + begin, up + begin, end - begin,
                             out + begin);
      case Isa::kAvx2:
        return SiluMulAvx2(gate + begin, up + begin, end - begin, out + begin);
#endif
      default:
        return SiluMulScalar(gate + begin, up + begin, end - begin,
                             out + begin);
    }
  });
}

void RmsNorm(const KernelContext& ctx, const float* x, const float* weight,
             int64_t n, int64_t h, float eps, float* out) {
  const int64_t rows_per_task =
      std::max<int64_t>(1, kMinChunk / std::max<int64_t>(h, 1));
  const int64_t tasks = (n + rows_per_task - 1) / rows_per_task;
  ctx.ParallelFor(tasks, [&](int64_t t) {
    const int64_t end = std::min(n, (t + 1) * rows_per_task);
    for (int64_t i = t * rows_per_task; i < end; ++i) {
      switch (ctx.isa) {
#if STRATA_CPU_X86
        case Isa::kAvx512:
          RmsNormRowAvx512(x + i * h, weight, h, eps, out + i * h);
          break;
        case Isa::kAvx2:
          RmsNormRowAvx2(x + i * h, weight, h, eps, out + i * h);
          break;
#endif
        default:
          RmsNormRowScalar(x + i * h, weight, h, eps, out + i * h);
          break;
      }
    }
  });
}

void Softmax(const KernelContext& ctx, int64_t n, int64_t m, float* x) {
  if (m <= 0) return;
  ctx.ParallelFor(n, [&](int64_t i) {
    float* row = x + i * m;
    const float max = *std::max_element(row, row + m);
    float sum = 0.0f;
    for (int64_t j = 0; j < m; ++j) {
      row[j] = std::exp(row[j] - max);
      sum += row[j];
    }
    const float inv_sum = 1.0f / sum;
    for (int64_t j = 0; j < m; ++j) row[j] *= inv_sum;
  });
}

void EmbeddingGather(const KernelContext& ctx, const float* table, int64_t h,
                     std::span<const int32_t> ids, float* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    std::memcpy(out + static_cast<int64_t>(i) * h,
                table + static_cast<int64_t>(ids[i]) * h,
                static_cast<size_t>(h) * sizeof(float));
  }
}

}  // namespace strata::cpu
