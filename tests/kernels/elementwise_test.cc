// The token-wise ops against float64 references, for every ISA variant.
#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/thread_pool.h"

namespace strata::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class ElementwiseTest : public testing::TestWithParam<Isa> {
 protected:
  ThreadPool pool_{2};
  KernelContext ctx_{GetParam(), &pool_};
};

TEST_P(ElementwiseTest, Add) {
  for (int64_t count : {1, 15, 17, 100, 70001}) {
    std::vector<float> x = Random(count, 1);
    const std::vector<float> x0 = x;
    const std::vector<float> y = Random(count, 2);
    Add(ctx_, y.data(), count, x.data());
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(x[i], x0[i] + y[i]);
  }
}

TEST_P(ElementwiseTest, AddBias) {
  const int64_t n = 5, m = 37;
  std::vector<float> x = Random(n * m, 3);
  const std::vector<float> x0 = x;
  const std::vector<float> bias = Random(m, 4);
  AddBias(ctx_, bias.data(), n, m, x.data());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_EQ(x[i * m + j], x0[i * m + j] + bias[j]);
    }
  }
}

TEST_P(ElementwiseTest, SiluMul) {
  for (int64_t count : {1, 7, 33, 50000}) {
    const std::vector<float> gate = Random(count, 5, 8.0f);
    const std::vector<float> up = Random(count, 6, 2.0f);
    std::vector<float> out(count);
    SiluMul(ctx_, gate.data(), up.data(), count, out.data());
    for (int64_t i = 0; i < count; ++i) {
      const double g = gate[i];
      const double expected = g / (1.0 + std::exp(-g)) * up[i];
      ASSERT_NEAR(out[i], expected, 1e-6 * (1.0 + std::fabs(expected))) << i;
    }
    // The same bits as the scalar variant (one exponential for every ISA).
    std::vector<float> scalar(count);
    const KernelContext scalar_ctx{Isa::kScalar, nullptr};
    SiluMul(scalar_ctx, gate.data(), up.data(), count, scalar.data());
    ASSERT_EQ(0, std::memcmp(out.data(), scalar.data(), count * sizeof(float)))
        << count;
  }
  // Saturation at both ends stays finite and close.
  const std::vector<float> gate = {-100.0f, -88.5f, -87.5f, -0.0f, 0.0f, 1e-30f,
                                   87.5f,   88.5f,  100.0f, -3.0f, 3.0f, -20.0f,
                                   20.0f,   -50.0f, 50.0f,  0.5f,  -0.5f};
  const std::vector<float> up(gate.size(), 1.5f);
  std::vector<float> out(gate.size());
  SiluMul(ctx_, gate.data(), up.data(), static_cast<int64_t>(gate.size()),
          out.data());
  for (size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    const double expected = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_TRUE(std::isfinite(out[i])) << gate[i];
    ASSERT_NEAR(out[i], expected, 1e-6 * (1.0 + std::fabs(expected)))
        << gate[i];
  }
}

TEST_P(ElementwiseTest, RmsNorm) {
  for (int64_t h : {1, 16, 31, 64, 129}) {
    const int64_t n = 7;
    const std::vector<float> x = Random(n * h, 7, 3.0f);
    const std::vector<float> w = Random(h, 8);
    std::vector<float> out(n * h);
    RmsNorm(ctx_, x.data(), w.data(), n, h, 1e-5f, out.data());
    for (int64_t i = 0; i < n; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < h; ++j) ss += double{x[i * h + j]} * x[i * h + j];
      const double inv = 1.0 / std::sqrt(ss / h + 1e-5);
      for (int64_t j = 0; j < h; ++j) {
        const double expected = w[j] * (x[i * h + j] * inv);
        ASSERT_NEAR(out[i * h + j], expected,
                    2e-6 * (1.0 + std::fabs(expected)))
            << "h=" << h;
      }
    }
    // In place gives the same result.
    std::vector<float> in_place = x;
    RmsNorm(ctx_, in_place.data(), w.data(), n, h, 1e-5f, in_place.data());
    EXPECT_EQ(in_place, out);
  }
}

TEST_P(ElementwiseTest, RmsNormAgreesWithScalar) {
  const int64_t n = 3, h = 200;
  const std::vector<float> x = Random(n * h, 9);
  const std::vector<float> w = Random(h, 10);
  std::vector<float> a(n * h), b(n * h);
  RmsNorm(ctx_, x.data(), w.data(), n, h, 1e-6f, a.data());
  RmsNorm(KernelContext{Isa::kScalar, nullptr}, x.data(), w.data(), n, h, 1e-6f,
          b.data());
  for (int64_t i = 0; i < n * h; ++i) ASSERT_NEAR(a[i], b[i], 1e-5f);
}

TEST_P(ElementwiseTest, Softmax) {
  const int64_t n = 4, m = 37;
  std::vector<float> x = Random(n * m, 11, 20.0f);
  const std::vector<float> x0 = x;
  Softmax(ctx_, n, m, x.data());
  for (int64_t i = 0; i < n; ++i) {
    double max = -1e30, sum = 0;
    for (int64_t j = 0; j < m; ++j) max = std::max<double>(max, x0[i * m + j]);
    for (int64_t j = 0; j < m; ++j) sum += std::exp(x0[i * m + j] - max);
    double total = 0;
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_NEAR(x[i * m + j], std::exp(x0[i * m + j] - max) / sum, 1e-6);
      total += x[i * m + j];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST_P(ElementwiseTest, EmbeddingGather) {
  const int64_t vocab = 11, h = 19;
  const std::vector<float> table = Random(vocab * h, 12);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7};
  std::vector<float> out(ids.size() * h);
  EmbeddingGather(ctx_, table.data(), h, ids, out.data());
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t j = 0; j < h; ++j) {
      ASSERT_EQ(out[i * h + j], table[ids[i] * h + j]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, ElementwiseTest,
                         testing::ValuesIn(SupportedIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });

}  // namespace
}  // namespace strata::cpu
