// The kernels written without a GPU, executed on the CPU by the SIMT
// emulator (tests/cuda/simt_emulator.h): the grouped split-KV decode
// attention with its combine kernel, and the two int8 GEMVs, against plain
// host references. These run everywhere (no device needed); the same
// kernels' GPU tests (cuda_attention_test.cc, cuda_kernels_test.cc) check
// the compiled code on a device. Shapes are small because each emulated
// thread is a fiber.
// clang-format off
#include "tests/cuda/simt_emulator.h"  // first: defines the CUDA qualifiers
// Their `#pragma unroll` lines mean nothing to the host compiler; this file is
// built with -Wno-unknown-pragmas (cmake/cuda.cmake).
#include "kernels/cuda/decode_attention_kernel.cuh"
#include "kernels/cuda/int8_gemv_kernel.cuh"
#include "kernels/cuda/paged_attention_kernel.cuh"
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"
#include "kernels/cuda/decode_attention.h"

namespace strata::cuda {
namespace {

using testing_simt::EmulateLaunch;

// The emulator itself: warps may take different numbers of shuffle trips
// (warp 1 loops twice as often as warp 0) with a __syncthreads after, and a
// shuffle only some lanes of a warp reach is reported, not hung.
__global__ void WarpTripsKernel(int* out) {
  __shared__ int per_warp[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int total = 0;
  for (int trip = 0; trip < 1 + warp; ++trip) {
    int v = lane + trip;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    total += v;  // sum over lanes of (lane + trip) = 496 + 32 * trip
  }
  if (lane == 0) per_warp[warp] = total;
  __syncthreads();
  out[threadIdx.x] = per_warp[0] + 10000 * per_warp[1];
}

__global__ void DivergentShuffleKernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

TEST(SimtEmulatorTest, WarpsShuffleIndependently) {
  std::vector<int> out(64, -1);
  EmulateLaunch(dim3(1), 64, [&] { WarpTripsKernel(out.data()); });
  for (int t = 0; t < 64; ++t) {
    ASSERT_EQ(out[t], 496 + 10000 * (496 + 528)) << t;
  }
}

TEST(SimtEmulatorTest, DivergentShuffleIsAFailureNotAHang) {
  std::vector<int> out(32, -1);
  EXPECT_NONFATAL_FAILURE(
      EmulateLaunch(dim3(1), 32, [&] { DivergentShuffleKernel(out.data()); }),
      "deadlocked");
}

template <typename T>
T To16(float x);
template <>
__half To16<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__nv_bfloat16 To16<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
float ToF(__half x) { return __half2float(x); }
float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }

struct DecodeCase {
  int32_t num_heads, num_kv_heads, block_size;
  std::vector<int32_t> contexts;  // one decode row each
  int num_sms;                    // what PlanDecode is told (drives splits)
};

// Builds a paged cache with shuffled blocks, runs the emulated grouped kernel
// (per_head: the per-head kernel of paged_attention_kernel.cuh, with its
// 512-key splits) and the combine kernel when rows are split, and compares
// every output with attention computed in double from the same 16-bit values.
template <typename T, int D>
void RunDecodeCase(const DecodeCase& c, bool per_head = false) {
  AttentionGeometry g;
  g.num_heads = c.num_heads;
  g.num_kv_heads = c.num_kv_heads;
  g.head_dim = D;
  g.block_size = c.block_size;
  g.scale = 1.0f / std::sqrt(static_cast<float>(D));
  g.cache_type = std::is_same_v<T, __half> ? DType::kF16 : DType::kBF16;
  const int64_t rows = static_cast<int64_t>(c.contexts.size());
  const int32_t max_context =
      *std::max_element(c.contexts.begin(), c.contexts.end());
  DecodePlan plan;
  if (per_head) {
    plan.keys_per_split = kSplitKeys;
    plan.max_splits = (max_context + kSplitKeys - 1) / kSplitKeys;
  } else {
    plan = PlanDecode(g, rows, max_context, c.num_sms);
    ASSERT_TRUE(plan.supported);
  }

  // Block tables over a shuffled pool, plus unused blocks.
  std::vector<int32_t> tables;
  std::vector<DecodeRow> decode_rows;
  int32_t blocks = 0;
  for (int32_t ctx : c.contexts)
    blocks += (ctx + g.block_size - 1) / g.block_size;
  std::vector<int32_t> pool(blocks + 2);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(3));
  int32_t next = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t ctx = c.contexts[r];
    const int32_t n = (ctx + g.block_size - 1) / g.block_size;
    decode_rows.push_back({static_cast<int32_t>(r), ctx - 1,
                           static_cast<int32_t>(tables.size())});
    tables.insert(tables.end(), pool.begin() + next, pool.begin() + next + n);
    next += n;
  }
  const size_t cache_elems =
      pool.size() * g.num_kv_heads * g.block_size * static_cast<size_t>(D);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<T> k(cache_elems), v(cache_elems);
  for (T& x : k) x = To16<T>(normal(rng));
  for (T& x : v) x = To16<T>(normal(rng));
  const int64_t q_width = static_cast<int64_t>(g.num_heads) * D;
  std::vector<float> q(rows * q_width);
  for (float& x : q) x = normal(rng);
  std::vector<float> out(q.size(), std::nanf("")), partials;
  partials.resize(rows * g.num_heads * plan.max_splits * (D + 2) + 1);

  if (per_head) {
    EmulateLaunch(
        dim3(static_cast<unsigned>(rows), static_cast<unsigned>(g.num_heads),
             static_cast<unsigned>(plan.max_splits)),
        kThreads, [&] {
          DecodeKernel<T>(g, q.data(), k.data(), v.data(), tables.data(),
                          decode_rows.data(), partials.data(), out.data());
        });
  } else {
    const dim3 grid(static_cast<unsigned>(rows),
                    static_cast<unsigned>(g.num_kv_heads * plan.head_chunks),
                    static_cast<unsigned>(plan.max_splits));
    DispatchGroup(plan.heads_per_cta, [&](auto group) {
      EmulateLaunch(grid, kDecodeThreads, [&] {
        GroupedDecodeKernel<T, D, decltype(group)::value>(
            g, plan.keys_per_split, plan.head_chunks, BlockShift(g.block_size),
            q.data(), k.data(), v.data(), tables.data(), decode_rows.data(),
            partials.data(), out.data());
      });
    });
  }
  if (plan.max_splits > 1) {
    EmulateLaunch(
        dim3(static_cast<unsigned>(rows), static_cast<unsigned>(g.num_heads)),
        static_cast<unsigned>(std::min((D + 31) / 32 * 32, 128)), [&] {
          DecodeCombineKernel(g, plan.keys_per_split, decode_rows.data(),
                              plan.max_splits, partials.data(), out.data());
        });
  }

  const int group = g.num_heads / g.num_kv_heads;
  double worst = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t ctx = c.contexts[r];
    for (int h = 0; h < g.num_heads; ++h) {
      const int kv = h / group;
      const float* qh = q.data() + r * q_width + h * D;
      // Element offset of key j's row of this kv head, via the table.
      std::vector<size_t> at(ctx);
      for (int32_t j = 0; j < ctx; ++j) {
        const int32_t block =
            tables[decode_rows[r].table_offset + j / g.block_size];
        at[j] =
            ((static_cast<size_t>(block) * g.num_kv_heads + kv) * g.block_size +
             j % g.block_size) *
            D;
      }
      std::vector<double> score(ctx);
      double m = -INFINITY;
      for (int32_t j = 0; j < ctx; ++j) {
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += qh[d] * ToF(k[at[j] + d]);
        score[j] = dot * g.scale;
        m = std::max(m, score[j]);
      }
      double l = 0.0;
      std::vector<double> want(D, 0.0);
      for (int32_t j = 0; j < ctx; ++j) {
        const double p = std::exp(score[j] - m);
        l += p;
        for (int d = 0; d < D; ++d) want[d] += p * ToF(v[at[j] + d]);
      }
      for (int d = 0; d < D; ++d) {
        const double got = out[r * q_width + h * D + d];
        ASSERT_FALSE(std::isnan(got))
            << "row " << r << " head " << h << " dim " << d << " not written";
        worst = std::max(worst, std::abs(got - want[d] / l));
      }
    }
  }
  EXPECT_LT(worst, 2e-5) << "splits " << plan.max_splits << " keys/split "
                         << plan.keys_per_split;
}

TEST(EmulatedDecodeAttentionTest, OneSplitPerRow) {
  // Many SMs' worth of CTAs wanted but contexts too short to split.
  RunDecodeCase<__half, 64>({8, 2, 16, {1, 17, 100}, 132});
  RunDecodeCase<__nv_bfloat16, 128>({4, 4, 32, {33, 5}, 132});
}

TEST(EmulatedDecodeAttentionTest, SplitRowsAreCombined) {
  // One SM: no splits. 132 SMs and a long row: several 128-key splits, the
  // short rows in one; partial chunks and partial blocks at every end.
  RunDecodeCase<__nv_bfloat16, 64>({8, 1, 16, {700, 3, 129}, 132});
  RunDecodeCase<__half, 128>({16, 2, 32, {300, 1}, 132});
  RunDecodeCase<__half, 64>({4, 4, 16, {300}, 1});
}

TEST(EmulatedDecodeAttentionTest, GroupsOfTwoThreeAndSixteen) {
  // GQA 2 and 3 (a 4-head CTA, partly masked), 16 (two 8-head CTAs).
  RunDecodeCase<__half, 64>({4, 2, 16, {40, 2}, 132});
  RunDecodeCase<__nv_bfloat16, 64>({6, 2, 32, {70}, 132});
  RunDecodeCase<__half, 64>({16, 1, 16, {200}, 132});
}

// The per-head kernel (head dim 80, block 8: geometries the grouped one
// declines) with rows over one, two and three of its 512-key splits, merged
// by the shared combine kernel (its partial maxima now in log2 units).
TEST(EmulatedDecodeAttentionTest, PerHeadKernelAndCombine) {
  RunDecodeCase<__half, 80>({2, 1, 8, {1030, 513, 7}, 132}, /*per_head=*/true);
  RunDecodeCase<__nv_bfloat16, 64>({1, 1, 16, {600}, 132}, /*per_head=*/true);
}

TEST(EmulatedDecodeAttentionTest, HeadDim256) {
  RunDecodeCase<__nv_bfloat16, 256>({8, 2, 16, {150, 9}, 132});
}

// Weight-only GEMV: rows 1..16 (every template), m not a multiple of the
// CTA's channels, k a multiple of 16 but not of the CTA's 2048-byte stride.
TEST(EmulatedInt8GemvTest, MatchesHostProduct) {
  const int64_t m = 13, k = 2080;
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> byte(-127, 127);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int8_t> w(m * k);
  for (int8_t& x : w) x = static_cast<int8_t>(byte(rng));
  std::vector<float> scales(m);
  for (float& s : scales) s = 0.01f + 0.001f * normal(rng);
  for (int n : {1, 2, 3, 4, 5, 8, 9, 16}) {
    std::vector<float> x(n * k);
    for (float& e : x) e = normal(rng);
    std::vector<float> out(n * m, std::nanf(""));
    DispatchGemvRows(n, [&](auto rows, auto channels) {
      constexpr int N = decltype(rows)::value, C = decltype(channels)::value;
      EmulateLaunch(
          dim3(static_cast<unsigned>((m + C - 1) / C)), kGemvThreads, [&] {
            Int8GemvTiledKernel<N, C>(x.data(), w.data(), scales.data(), n, m,
                                      k, out.data());
          });
    });
    for (int i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        double want = 0.0;
        for (int64_t p = 0; p < k; ++p) want += x[i * k + p] * w[j * k + p];
        want *= scales[j];
        EXPECT_NEAR(out[i * m + j], want, 1e-4 * (1.0 + std::abs(want)))
            << "n=" << n << " i=" << i << " j=" << j;
      }
    }
  }
}

// The LLM.int8() inlier GEMV: exact int32 at every template.
TEST(EmulatedInt8GemvTest, DotGemvIsExact) {
  const int64_t m = 11, k = 2064;
  std::mt19937 rng(22);
  std::uniform_int_distribution<int> byte(-128, 127);
  std::vector<int8_t> w(m * k);
  for (int8_t& x : w) x = static_cast<int8_t>(byte(rng));
  for (int n : {1, 2, 4, 7, 16}) {
    std::vector<int8_t> x(n * k);
    for (int8_t& e : x) e = static_cast<int8_t>(byte(rng));
    std::vector<int32_t> acc(n * m, -1);
    DispatchGemvRows(n, [&](auto rows, auto channels) {
      constexpr int N = decltype(rows)::value, C = decltype(channels)::value;
      EmulateLaunch(
          dim3(static_cast<unsigned>((m + C - 1) / C)), kGemvThreads, [&] {
            Int8DotGemvKernel<N, C>(x.data(), w.data(), n, m, k, acc.data());
          });
    });
    for (int i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        int32_t want = 0;
        for (int64_t p = 0; p < k; ++p) want += x[i * k + p] * w[j * k + p];
        ASSERT_EQ(acc[i * m + j], want)
            << "n=" << n << " i=" << i << " j=" << j;
      }
    }
  }
}

}  // namespace
}  // namespace strata::cuda
