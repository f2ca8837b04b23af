// Bf16MatMul: rounding to bfloat16, the documented pairwise formula (which
// the vdpbf16ps variant must reproduce bit for bit -- this is the check that
// the hardware adds the odd product first, with one rounding per addition),
// the error against the f64 product, and batch invariance.
#include "kernels/cpu/bf16_matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/matmul_reference.h"

namespace strata::cpu {
namespace {

using reference::Random;
using reference::Reference;
using reference::Shape;

float Widen(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

TEST(RoundToBf16Test, NearestEvenAndSpecials) {
  EXPECT_EQ(RoundToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 is half-way between 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(RoundToBf16(1.0f + 1.0f / 256), 0x3f80);
  // 1 + 3 * 2^-8 is half-way between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
  EXPECT_EQ(RoundToBf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(RoundToBf16(1.0f + 1.0f / 256 + 1.0f / 65536), 0x3f81);
  EXPECT_EQ(RoundToBf16(-2.5f), 0xc020);
  EXPECT_EQ(RoundToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(
      Widen(RoundToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(RoundToBf16(std::numeric_limits<float>::denorm_min()), 0);
  EXPECT_EQ(RoundToBf16(-std::numeric_limits<float>::denorm_min()), 0x8000);
}

// The formula of bf16_matmul.h, from the unpacked values.
float Formula(const float* x, const float* w, int64_t k) {
  float acc = 0.0f;
  for (int64_t q = 0; q < (k + 1) / 2; ++q) {
    const float x1 = 2 * q + 1 < k ? Widen(RoundToBf16(x[2 * q + 1])) : 0.0f;
    const float w1 = 2 * q + 1 < k ? Widen(RoundToBf16(w[2 * q + 1])) : 0.0f;
    acc = acc + x1 * w1;
    acc = acc + Widen(RoundToBf16(x[2 * q])) * Widen(RoundToBf16(w[2 * q]));
  }
  return acc;
}

class Bf16MatMulTest : public testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam() && !Bf16DotSupported()) {
      GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
    }
  }
};

TEST_P(Bf16MatMulTest, EqualsFormulaAndIsCloseToFloat64) {
  ThreadPool pool(2);
  const KernelContext ctx{DefaultIsa(), &pool};
  const Shape shapes[] = {
      {1, 1, 1},    {1, 7, 3},     {2, 5, 15},    {3, 16, 16},  {4, 17, 17},
      {5, 33, 31},  {9, 49, 100},  {37, 41, 129}, {1, 300, 67}, {33, 19, 255},
      {6, 70, 1000}, {70, 130, 40}};
  uint32_t seed = 7;
  for (const Shape& s : shapes) {
    const std::vector<float> x = Random(s.n * s.k, seed++);
    const std::vector<float> w = Random(s.m * s.k, seed++);
    std::vector<uint16_t> packed(Bf16PairPackedSize(s.m, s.k), 0xdead);
    PackWeightBf16Pairs(w.data(), s.m, s.k, packed.data());
    std::vector<float> out(s.n * s.m, -1.0f);
    Bf16MatMul(ctx, GetParam(), x.data(), packed.data(), s.n, s.m, s.k,
               out.data());
    std::vector<double> exact, magnitude;
    Reference(x, w, s.n, s.m, s.k, &exact, &magnitude);
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t j = 0; j < s.m; ++j) {
        const float got = out[i * s.m + j];
        ASSERT_EQ(got, Formula(x.data() + i * s.k, w.data() + j * s.k, s.k))
            << "n=" << s.n << " m=" << s.m << " k=" << s.k << " at " << i
            << "," << j;
        // Each factor within 2^-9 relative, then k f32 additions.
        const double bound =
            magnitude[i * s.m + j] * (2.0 / 512 + (s.k + 1) * 6e-8);
        ASSERT_NEAR(got, exact[i * s.m + j], bound + 1e-30);
      }
    }
  }
}

TEST_P(Bf16MatMulTest, BatchInvariant) {
  ThreadPool pool(2);
  const KernelContext threaded{DefaultIsa(), &pool};
  const KernelContext single{DefaultIsa(), nullptr};
  const int64_t n = 33, m = 70, k = 77;
  const std::vector<float> x = Random(n * k, 5);
  std::vector<uint16_t> packed(Bf16PairPackedSize(m, k));
  PackWeightBf16Pairs(Random(m * k, 6).data(), m, k, packed.data());
  std::vector<float> batch(n * m), batch_single(n * m);
  Bf16MatMul(threaded, GetParam(), x.data(), packed.data(), n, m, k,
             batch.data());
  Bf16MatMul(single, GetParam(), x.data(), packed.data(), n, m, k,
             batch_single.data());
  EXPECT_EQ(batch, batch_single);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(m);
    Bf16MatMul(threaded, GetParam(), x.data() + i * k, packed.data(), 1, m, k,
               alone.data());
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_EQ(alone[j], batch[i * m + j]) << "row " << i << " col " << j;
    }
  }
}

// Rounding corner cases in x (ties both ways, subnormals, +-0, a value
// that rounds up into the next binade): vcvtneps2bf16 and RoundToBf16 agree.
TEST_P(Bf16MatMulTest, RoundsXLikeRoundToBf16) {
  const KernelContext ctx{DefaultIsa(), nullptr};
  std::vector<float> x = {1.0f + 1.0f / 256,
                          1.0f + 3.0f / 256,
                          -(1.0f + 1.0f / 256),
                          std::numeric_limits<float>::denorm_min(),
                          -1e-39f,
                          0.0f,
                          -0.0f,
                          1.9999999f,
                          3.0f + 1.0f / 64,
                          0.3f,
                          -7.77f,
                          1e-38f,
                          123.456f,
                          -0.001f,
                          5.5f,
                          6.25f,
                          1.0f + 1.0f / 128 + 1.0f / 256};
  const int64_t k = static_cast<int64_t>(x.size());
  for (int64_t p = 0; p < k; ++p) {
    // One-hot weights read x[p] back through a product with 1.
    std::vector<float> w(k, 0.0f);
    w[p] = 1.0f;
    std::vector<uint16_t> packed(Bf16PairPackedSize(1, k));
    PackWeightBf16Pairs(w.data(), 1, k, packed.data());
    float out = -1.0f;
    Bf16MatMul(ctx, GetParam(), x.data(), packed.data(), 1, 1, k, &out);
    const float expected = Widen(RoundToBf16(x[p]));
    EXPECT_EQ(std::fabs(out), std::fabs(expected)) << "x[" << p << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, Bf16MatMulTest, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& info) {
                           return info.param ? "avx512_bf16" : "scalar";
                         });

}  // namespace
}  // namespace strata::cpu
