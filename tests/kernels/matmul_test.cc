// MatMul against a float64 reference, every ISA variant against the scalar
// one, and batch invariance (a row's bits do not depend on the batch size or
// the thread count).
#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstdint>
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

class MatMulTest : public testing::TestWithParam<Isa> {};

TEST_P(MatMulTest, MatchesFloat64Reference) {
  ThreadPool pool(2);
  const KernelContext ctx{GetParam(), &pool};
  const Shape shapes[] = {{1, 1, 1},    {1, 7, 3},     {2, 5, 15},
                          {3, 9, 16},   {4, 8, 17},    {5, 33, 31},
                          {7, 13, 64},  {13, 37, 100}, {37, 41, 129},
                          {1, 300, 67}, {33, 19, 255}, {6, 70, 1000}};
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    const std::vector<float> x = Random(s.n * s.k, seed++);
    const std::vector<float> w = Random(s.m * s.k, seed++);
    std::vector<float> out(s.n * s.m, -1.0f);
    MatMul(ctx, x.data(), w.data(), s.n, s.m, s.k, out.data());
    std::vector<double> expected, magnitude;
    Reference(x, w, s.n, s.m, s.k, &expected, &magnitude);
    for (int64_t i = 0; i < s.n * s.m; ++i) {
      // First-order f32 bound: a chain of k/8 lane adds plus the tree.
      const double bound = (s.k / 8.0 + 6.0) * 6e-8 * magnitude[i] + 1e-30;
      ASSERT_NEAR(out[i], expected[i], bound)
          << "n=" << s.n << " m=" << s.m << " k=" << s.k << " at " << i;
    }
  }
}

TEST_P(MatMulTest, AgreesWithScalarVariant) {
  const KernelContext ctx{GetParam(), nullptr};
  const KernelContext scalar{Isa::kScalar, nullptr};
  for (int64_t k : {1, 15, 16, 17, 63, 200}) {
    const int64_t n = 9, m = 23;
    const std::vector<float> x = Random(n * k, 100 + k);
    const std::vector<float> w = Random(m * k, 200 + k);
    std::vector<float> a(n * m), b(n * m);
    MatMul(ctx, x.data(), w.data(), n, m, k, a.data());
    MatMul(scalar, x.data(), w.data(), n, m, k, b.data());
    for (int64_t i = 0; i < n * m; ++i) {
      ASSERT_NEAR(a[i], b[i], 1e-5 * (1.0 + std::sqrt(static_cast<double>(k))))
          << "k=" << k;
    }
  }
}

// Row i computed alone, in a batch of 33 rows (at every position), and with
// 1 or 2 threads: bit-identical.
TEST_P(MatMulTest, BatchInvariant) {
  ThreadPool pool(2);
  const KernelContext threaded{GetParam(), &pool};
  const KernelContext single{GetParam(), nullptr};
  const int64_t n = 33, m = 70, k = 77;
  const std::vector<float> x = Random(n * k, 5);
  const std::vector<float> w = Random(m * k, 6);
  std::vector<float> batch(n * m);
  MatMul(threaded, x.data(), w.data(), n, m, k, batch.data());
  std::vector<float> batch_single(n * m);
  MatMul(single, x.data(), w.data(), n, m, k, batch_single.data());
  EXPECT_EQ(batch, batch_single);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(m);
    MatMul(threaded, x.data() + i * k, w.data(), 1, m, k, alone.data());
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_EQ(alone[j], batch[i * m + j]) << "row " << i << " col " << j;
    }
  }
  // Every batch size from 1 to 37 gives row 0 the same bits.
  const std::vector<float> x37 = Random(37 * k, 9);
  std::vector<float> first(m);
  MatMul(threaded, x37.data(), w.data(), 1, m, k, first.data());
  for (int64_t rows = 2; rows <= 37; ++rows) {
    std::vector<float> out(rows * m);
    MatMul(threaded, x37.data(), w.data(), rows, m, k, out.data());
    for (int64_t j = 0; j < m; ++j) ASSERT_EQ(out[j], first[j]) << rows;
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, MatMulTest, testing::ValuesIn(SupportedIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });

}  // namespace
}  // namespace strata::cpu
