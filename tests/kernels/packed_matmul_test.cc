// PackedMatMul against a float64 reference, bit-identical results across the
// ISA variants (they run the same fused multiply-adds in the same order), and
// batch invariance (a row's bits do not depend on the batch size or the
// thread count).
#include "kernels/cpu/packed_matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
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

std::vector<float> Pack(const std::vector<float>& w, int64_t m, int64_t k) {
  std::vector<float> packed(PackedWeightSize(m, k), -7.0f);
  PackWeight(w.data(), m, k, packed.data());
  return packed;
}

TEST(PackWeightTest, PanelLayoutAndPadding) {
  const int64_t m = 18, k = 3;  // one full panel and one of 2 columns
  std::vector<float> w(m * k);
  for (int64_t i = 0; i < m * k; ++i) w[i] = static_cast<float>(i);
  const std::vector<float> packed = Pack(w, m, k);
  ASSERT_EQ(packed.size(), 2u * 16u * 3u);
  for (int64_t panel = 0; panel < 2; ++panel) {
    for (int64_t p = 0; p < k; ++p) {
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t row = panel * 16 + c;
        const float expected = row < m ? w[row * k + p] : 0.0f;
        ASSERT_EQ(packed[(panel * k + p) * 16 + c], expected)
            << "panel " << panel << " p " << p << " c " << c;
      }
    }
  }
}

class PackedMatMulTest : public testing::TestWithParam<Isa> {};

TEST_P(PackedMatMulTest, MatchesFloat64Reference) {
  ThreadPool pool(2);
  const KernelContext ctx{GetParam(), &pool};
  const Shape shapes[] = {
      {1, 1, 1},    {1, 7, 3},     {2, 5, 15},    {3, 16, 16},   {4, 17, 17},
      {5, 33, 31},  {7, 48, 64},   {9, 49, 100},  {13, 37, 100}, {37, 41, 129},
      {1, 300, 67}, {33, 19, 255}, {6, 70, 1000}, {70, 130, 40}};
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    const std::vector<float> x = Random(s.n * s.k, seed++);
    const std::vector<float> w = Random(s.m * s.k, seed++);
    const std::vector<float> packed = Pack(w, s.m, s.k);
    std::vector<float> out(s.n * s.m, -1.0f);
    PackedMatMul(ctx, x.data(), packed.data(), s.n, s.m, s.k, out.data());
    std::vector<double> expected, magnitude;
    Reference(x, w, s.n, s.m, s.k, &expected, &magnitude);
    for (int64_t i = 0; i < s.n * s.m; ++i) {
      // First-order f32 bound of a sequential chain of k fused adds.
      const double bound = (s.k + 1.0) * 6e-8 * magnitude[i] + 1e-30;
      ASSERT_NEAR(out[i], expected[i], bound)
          << "n=" << s.n << " m=" << s.m << " k=" << s.k << " at " << i;
    }
  }
}

// Every variant performs acc = fma(x, w, acc) over p in order: same bits.
TEST_P(PackedMatMulTest, BitIdenticalToScalarVariant) {
  const KernelContext ctx{GetParam(), nullptr};
  const KernelContext scalar{Isa::kScalar, nullptr};
  for (int64_t k : {1, 15, 16, 17, 63, 200}) {
    const int64_t n = 11, m = 53;
    const std::vector<float> x = Random(n * k, 100 + k);
    const std::vector<float> packed = Pack(Random(m * k, 200 + k), m, k);
    std::vector<float> a(n * m), b(n * m);
    PackedMatMul(ctx, x.data(), packed.data(), n, m, k, a.data());
    PackedMatMul(scalar, x.data(), packed.data(), n, m, k, b.data());
    EXPECT_EQ(a, b) << "k=" << k;
  }
}

// Row i computed alone, in a batch of 33 rows (at every position), and with
// 1 or 2 threads: bit-identical; row 0 likewise for every batch size 1..37.
TEST_P(PackedMatMulTest, BatchInvariant) {
  ThreadPool pool(2);
  const KernelContext threaded{GetParam(), &pool};
  const KernelContext single{GetParam(), nullptr};
  const int64_t n = 33, m = 70, k = 77;
  const std::vector<float> x = Random(n * k, 5);
  const std::vector<float> packed = Pack(Random(m * k, 6), m, k);
  std::vector<float> batch(n * m), batch_single(n * m);
  PackedMatMul(threaded, x.data(), packed.data(), n, m, k, batch.data());
  PackedMatMul(single, x.data(), packed.data(), n, m, k, batch_single.data());
  EXPECT_EQ(batch, batch_single);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(m);
    PackedMatMul(threaded, x.data() + i * k, packed.data(), 1, m, k,
                 alone.data());
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_EQ(alone[j], batch[i * m + j]) << "row " << i << " col " << j;
    }
  }
  const std::vector<float> x37 = Random(37 * k, 9);
  std::vector<float> first(m);
  PackedMatMul(threaded, x37.data(), packed.data(), 1, m, k, first.data());
  for (int64_t rows = 2; rows <= 37; ++rows) {
    std::vector<float> out(rows * m);
    PackedMatMul(threaded, x37.data(), packed.data(), rows, m, k, out.data());
    for (int64_t j = 0; j < m; ++j) ASSERT_EQ(out[j], first[j]) << rows;
  }
}

// PackedMatMulAdd is PackedMatMul into a temporary, then out + temporary:
// bit for bit on every ISA, with partial panels, row tails (1-9 rows, the
// 8-row tiles and AVX2's 6) and threads; an empty reduction leaves out.
TEST_P(PackedMatMulTest, AddEqualsProductThenAddBitForBit) {
  ThreadPool pool(2);
  for (const KernelContext ctx :
       {KernelContext{GetParam(), nullptr}, KernelContext{GetParam(), &pool}}) {
    for (int64_t m : {5, 16, 37, 70}) {
      for (int64_t n = 1; n <= 9; ++n) {
        const int64_t k = 8 + n;
        const std::vector<float> x = Random(n * k, 300 + n);
        const std::vector<float> packed = Pack(Random(m * k, 400 + m), m, k);
        const std::vector<float> before = Random(n * m, 500 + n + m);
        std::vector<float> product(n * m), want = before, got = before;
        PackedMatMul(ctx, x.data(), packed.data(), n, m, k, product.data());
        for (int64_t i = 0; i < n * m; ++i) want[i] = before[i] + product[i];
        PackedMatMulAdd(ctx, x.data(), packed.data(), n, m, k, got.data());
        ASSERT_EQ(got, want) << "n=" << n << " m=" << m;
      }
    }
  }
  const KernelContext ctx{GetParam(), nullptr};
  std::vector<float> out(3 * 5, 1.5f);
  const std::vector<float> empty(PackedWeightSize(5, 0));
  PackedMatMulAdd(ctx, nullptr, empty.data(), 3, 5, 0, out.data());
  EXPECT_EQ(out, std::vector<float>(15, 1.5f));
}

TEST_P(PackedMatMulTest, EmptyReductionGivesZeros) {
  const KernelContext ctx{GetParam(), nullptr};
  std::vector<float> out(3 * 5, 1.0f);
  const std::vector<float> packed(PackedWeightSize(5, 0));
  PackedMatMul(ctx, nullptr, packed.data(), 3, 5, 0, out.data());
  EXPECT_EQ(out, std::vector<float>(15, 0.0f));
}

// bfloat16 panels: the weights widen to exactly the floats they are, so for
// bfloat16-valued weights the product equals the f32 panels' bit for bit, on
// every ISA and for awkward shapes (partial panels, odd k, row tails).
TEST_P(PackedMatMulTest, Bf16PanelsEqualF32PanelsBitForBit) {
  ThreadPool pool(2);
  const KernelContext ctx{GetParam(), &pool};
  const Shape shapes[] = {{1, 1, 1},    {1, 7, 3},    {3, 16, 16},
                          {5, 33, 31},  {9, 49, 100}, {37, 41, 129},
                          {70, 130, 40}};
  uint32_t seed = 300;
  for (const Shape& s : shapes) {
    const std::vector<float> x = Random(s.n * s.k, seed++);
    std::vector<float> w = Random(s.m * s.k, seed++);
    EXPECT_FALSE(IsBf16Exact(w.data(), s.m * s.k));  // random floats
    for (float& v : w) {  // round to bfloat16 values (truncation suffices)
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      bits &= 0xffff0000u;
      std::memcpy(&v, &bits, sizeof(v));
    }
    ASSERT_TRUE(IsBf16Exact(w.data(), s.m * s.k));
    std::vector<uint16_t> packed16(PackedWeightSize(s.m, s.k), 0xdead);
    PackWeightBf16(w.data(), s.m, s.k, packed16.data());
    const std::vector<float> packed32 = Pack(w, s.m, s.k);
    std::vector<float> a(s.n * s.m, -1.0f), b(s.n * s.m, -2.0f);
    PackedMatMul(ctx, x.data(), packed16.data(), s.n, s.m, s.k, a.data());
    PackedMatMul(ctx, x.data(), packed32.data(), s.n, s.m, s.k, b.data());
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
        << "n=" << s.n << " m=" << s.m << " k=" << s.k;
    // And the same bits as the scalar variant.
    const KernelContext scalar{Isa::kScalar, nullptr};
    std::vector<float> c(s.n * s.m);
    PackedMatMul(scalar, x.data(), packed16.data(), s.n, s.m, s.k, c.data());
    ASSERT_EQ(0, std::memcmp(a.data(), c.data(), a.size() * sizeof(float)));
  }
}

// PackedMatMulPair gives each of its two products PackedMatMul's bits, for
// every split of up to 8 rows (the AVX-512 tile's 28 shapes), one-panel
// weights of 1 to 16 columns, odd and long k; and with more rows or a
// wider weight it falls back to the two products. Nothing past either
// output's [n, m] is written.
TEST_P(PackedMatMulTest, PairEqualsTwoProductsBitForBit) {
  const KernelContext alone{GetParam(), nullptr};
  uint32_t seed = 500;
  struct PairShape {
    int64_t n0, n1, m, k;
  };
  std::vector<PairShape> shapes;
  for (int64_t n0 = 1; n0 <= 7; ++n0) {
    for (int64_t n1 = 1; n0 + n1 <= 8; ++n1) {
      shapes.push_back({n0, n1, n0 % 2 == 0 ? 16 : 8, 37 + 10 * n1});
    }
  }
  shapes.push_back({3, 2, 1, 1});
  shapes.push_back({2, 6, 13, 640});
  shapes.push_back({6, 5, 16, 24});  // 11 rows: two products
  shapes.push_back({2, 2, 24, 30});  // two panels: two products
  for (const PairShape& s : shapes) {
    SCOPED_TRACE(testing::Message() << "n0=" << s.n0 << " n1=" << s.n1
                                    << " m=" << s.m << " k=" << s.k);
    const std::vector<float> x0 = Random(s.n0 * s.k, seed++);
    const std::vector<float> x1 = Random(s.n1 * s.k, seed++);
    const std::vector<float> w0 = Pack(Random(s.m * s.k, seed++), s.m, s.k);
    const std::vector<float> w1 = Pack(Random(s.m * s.k, seed++), s.m, s.k);
    std::vector<float> want0(s.n0 * s.m), want1(s.n1 * s.m);
    PackedMatMul(alone, x0.data(), w0.data(), s.n0, s.m, s.k, want0.data());
    PackedMatMul(alone, x1.data(), w1.data(), s.n1, s.m, s.k, want1.data());
    // One guard element past each output.
    std::vector<float> got0(s.n0 * s.m + 1, -3.0f), got1(s.n1 * s.m + 1, -4.0f);
    PackedMatMulPair(GetParam(), x0.data(), s.n0, w0.data(), x1.data(), s.n1,
                     w1.data(), s.m, s.k, got0.data(), got1.data());
    EXPECT_EQ(0, std::memcmp(got0.data(), want0.data(),
                             want0.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(got1.data(), want1.data(),
                             want1.size() * sizeof(float)));
    EXPECT_EQ(got0.back(), -3.0f);
    EXPECT_EQ(got1.back(), -4.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, PackedMatMulTest,
                         testing::ValuesIn(SupportedIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });

}  // namespace
}  // namespace strata::cpu
