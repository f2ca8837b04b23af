// Int8MatMul: the weight quantization and its panel layout, the activation
// quantization, the product against an independent scalar reference of the
// documented formula, its error against the exact f64 product, bit-identical
// results across the int8 variants, and batch invariance.
#include "kernels/cpu/int8_matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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
using reference::Shape;

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> scales;
  int32_t group_size = 0;
  Int8Panels panels() const { return {q.data(), scales.data(), group_size}; }
  // w_scale of input p of output channel j (the documented layout).
  float Scale(int64_t k, int64_t j, int64_t p) const {
    const int64_t g = group_size > 0 ? p / group_size : 0;
    return scales[((j / 16) * Int8NumGroups(k, group_size) + g) * 16 + j % 16];
  }
};

Quantized Quantize(const std::vector<float>& w, int64_t m, int64_t k,
                   int32_t group_size = 0) {
  Quantized out{std::vector<uint8_t>(Int8PackedBytes(m, k), 99),
                std::vector<float>(Int8ScaleCount(m, k, group_size), -1.0f),
                group_size};
  QuantizeWeightInt8(w.data(), m, k, out.q.data(), out.scales.data(),
                     group_size);
  return out;
}

// The group sizes the tests cover: per channel, the smallest, and sizes that
// leave a short last group for some k.
constexpr int32_t kGroupSizes[] = {0, 4, 32, 128};

// wq[j][p] read back from the documented layout (stored as wq + 128).
int8_t At(const Quantized& w, int64_t k, int64_t j, int64_t p) {
  const int64_t groups = Int8PaddedK(k) / 4;
  return static_cast<int8_t>(
      w.q[((j / 16) * groups + p / 4) * 64 + (j % 16) * 4 + p % 4] - 128);
}

TEST(QuantizeWeightInt8Test, LayoutScalesAndPadding) {
  const int64_t m = 18, k = 7;  // a partial panel, k not a multiple of 4
  std::vector<float> w = Random(m * k, 1);
  w[3 * k + 2] = 0.0f;
  for (int64_t p = 0; p < k; ++p) w[5 * k + p] = 0.0f;  // an all-zero row
  const Quantized q = Quantize(w, m, k);
  ASSERT_EQ(q.q.size(), 32u * 8u);
  for (int64_t j = 0; j < 32; ++j) {
    if (j >= m || j == 5) {
      EXPECT_EQ(q.scales[j], 0.0f) << j;
    }
    float absmax = 0.0f;
    for (int64_t p = 0; j < m && p < k; ++p) {
      absmax = std::max(absmax, std::fabs(w[j * k + p]));
    }
    if (j < m) {
      EXPECT_EQ(q.scales[j], absmax / 127.0f) << j;
    }
    for (int64_t p = 0; p < 8; ++p) {
      const int8_t v = At(q, k, j, p);
      if (j >= m || p >= k || j == 5) {
        ASSERT_EQ(v, 0) << j << " " << p;
        continue;
      }
      ASSERT_GE(v, -127);
      // Round to nearest: within half a step of the weight.
      EXPECT_LE(std::fabs(v * q.scales[j] - w[j * k + p]),
                0.5f * q.scales[j] * 1.0001f)
          << j << " " << p;
    }
  }
  EXPECT_EQ(At(q, k, 3, 2), 0);
}

// Groups of 32 over k = 70: two whole groups and a short one of 6. A group
// of zeros gets scale 0; every other value is within half of its own group's
// step; the scales sit per panel of 16 channels, group after group.
TEST(QuantizeWeightInt8Test, GroupScalesAndPadding) {
  const int64_t m = 18, k = 70;
  const int32_t group_size = 32;
  std::vector<float> w = Random(m * k, 2);
  for (int64_t p = 32; p < 64; ++p) w[4 * k + p] = 0.0f;  // row 4, group 1
  w[7 * k + 66] = 9.0f;  // a large value in row 7's short group
  EXPECT_EQ(Int8NumGroups(k, group_size), 3);
  EXPECT_EQ(Int8ScaleCount(m, k, group_size), 3 * 32);
  const Quantized q = Quantize(w, m, k, group_size);
  for (int64_t g = 0; g < 3; ++g) {
    for (int64_t j = 0; j < 32; ++j) {
      const float scale = q.scales[((j / 16) * 3 + g) * 16 + j % 16];
      float absmax = 0.0f;
      for (int64_t p = g * 32; j < m && p < std::min<int64_t>(k, g * 32 + 32);
           ++p) {
        absmax = std::max(absmax, std::fabs(w[j * k + p]));
      }
      ASSERT_EQ(scale, absmax / 127.0f) << g << " " << j;
      for (int64_t p = g * 32; j < m && p < std::min<int64_t>(k, g * 32 + 32);
           ++p) {
        const int8_t v = At(q, k, j, p);
        if (scale == 0.0f) {
          ASSERT_EQ(v, 0);
          continue;
        }
        ASSERT_LE(std::fabs(v * scale - w[j * k + p]), 0.5f * scale * 1.0001f)
            << j << " " << p;
      }
    }
  }
  EXPECT_EQ(q.Scale(k, 4, 32), 0.0f);
  EXPECT_EQ(q.Scale(k, 7, 64), 9.0f / 127.0f);
  EXPECT_LT(q.Scale(k, 7, 0),
            1.0f / 127.0f * 1.0001f);  // Random is in [-1, 1]
  EXPECT_TRUE(Int8GroupSizeValid(0));
  EXPECT_TRUE(Int8GroupSizeValid(64));
  EXPECT_FALSE(Int8GroupSizeValid(30));
  EXPECT_FALSE(Int8GroupSizeValid(-32));
  EXPECT_FALSE(Int8GroupSizeValid(2048));
}

class Int8MatMulTest : public testing::TestWithParam<Int8Isa> {};

TEST_P(Int8MatMulTest, QuantizeRowMatchesScalar) {
  for (int64_t k : {1, 3, 15, 16, 17, 31, 32, 33, 100, 1000}) {
    std::vector<float> x = Random(k, 40 + k);
    for (int64_t p = 0; p < k; p += 5) x[p] *= 30.0f;  // spread magnitudes
    x[k / 2] = 0.5f * std::fabs(x[0]) / 127.0f;        // a half-way tie
    const int64_t kp = Int8PaddedK(k);
    std::vector<int8_t> a(kp, 55), b(kp, 66);
    const float sa = QuantizeRowInt8(GetParam(), x.data(), k, a.data());
    const float sb = QuantizeRowInt8(Int8Isa::kScalar, x.data(), k, b.data());
    EXPECT_EQ(sa, sb) << k;
    EXPECT_EQ(a, b) << k;
    float absmax = 0.0f;
    for (float v : x) absmax = std::max(absmax, std::fabs(v));
    EXPECT_EQ(sb, absmax / 127.0f);
    bool saw_127 = false;
    for (int64_t p = 0; p < kp; ++p) {
      if (p >= k) {
        ASSERT_EQ(b[p], 0);
        continue;
      }
      saw_127 = saw_127 || std::abs(b[p]) == 127;
      ASSERT_EQ(b[p],
                static_cast<int8_t>(std::nearbyint(x[p] * (127.0f / absmax))));
    }
    EXPECT_TRUE(saw_127) << k;
  }
  std::vector<int8_t> q(20, 1);
  const std::vector<float> zeros(17, 0.0f);
  EXPECT_EQ(QuantizeRowInt8(GetParam(), zeros.data(), 17, q.data()), 0.0f);
  EXPECT_EQ(q, std::vector<int8_t>(20, 0));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = Random(40, 3);
    q.assign(40, 1);
    x[21] = bad;  // in the vector body
    EXPECT_TRUE(
        std::isnan(QuantizeRowInt8(GetParam(), x.data(), 40, q.data())));
    x[21] = 0.0f;
    x[39] = -bad;  // in the scalar tail
    EXPECT_TRUE(
        std::isnan(QuantizeRowInt8(GetParam(), x.data(), 40, q.data())));
  }
}

// The documented formula, computed here independently (scalar, from the
// layout-free quantized values), equals the kernel bit for bit; and the
// result is within the quantization error of the exact product.
TEST_P(Int8MatMulTest, MatchesScalarReferenceAndFloat64) {
  ThreadPool pool(2);
  const KernelContext ctx{Isa::kScalar, &pool};
  const Shape shapes[] = {
      {1, 1, 1},    {1, 7, 3},     {2, 5, 15},    {3, 16, 16},   {4, 17, 17},
      {5, 33, 31},  {7, 48, 64},   {9, 49, 100},  {13, 37, 100}, {37, 41, 129},
      {1, 300, 67}, {33, 19, 255}, {6, 70, 1000}, {70, 130, 40}};
  uint32_t seed = 10;
  for (const Shape& s : shapes) {
    const std::vector<float> x = Random(s.n * s.k, seed++);
    const std::vector<float> w = Random(s.m * s.k, seed++);
    const Quantized q = Quantize(w, s.m, s.k);
    std::vector<float> out(s.n * s.m, -1.0f);
    Int8MatMul(ctx, GetParam(), x.data(), q.panels(), s.n, s.m, s.k,
               out.data());
    for (int64_t i = 0; i < s.n; ++i) {
      std::vector<int8_t> xq(Int8PaddedK(s.k));
      const float xs =
          QuantizeRowInt8(Int8Isa::kScalar, x.data() + i * s.k, s.k, xq.data());
      for (int64_t j = 0; j < s.m; ++j) {
        int64_t sum = 0;
        double exact = 0.0, magnitude = 0.0;
        for (int64_t p = 0; p < s.k; ++p) {
          sum += int64_t{xq[p]} * At(q, s.k, j, p);
          exact += double{x[i * s.k + p]} * w[j * s.k + p];
          magnitude += std::fabs(double{x[i * s.k + p]} * w[j * s.k + p]);
        }
        const float expected = static_cast<float>(sum) * (xs * q.scales[j]);
        const float got = out[i * s.m + j];
        ASSERT_EQ(got, expected) << "n=" << s.n << " m=" << s.m << " k=" << s.k
                                 << " at " << i << "," << j;
        // Each factor is off by at most half a step (1/254 of its row's
        // absmax); the error is bounded by both steps over the row.
        double xmax = 0, wmax = 0, xsum = 0, wsum = 0;
        for (int64_t p = 0; p < s.k; ++p) {
          xmax = std::max(xmax, std::fabs(double{x[i * s.k + p]}));
          wmax = std::max(wmax, std::fabs(double{w[j * s.k + p]}));
          xsum += std::fabs(double{x[i * s.k + p]});
          wsum += std::fabs(double{w[j * s.k + p]});
        }
        const double bound =
            (xmax / 254) * wsum * 1.01 + (wmax / 254) * xsum * 1.01 +
            s.k * (xmax / 254) * (wmax / 254) + 1e-6 * magnitude;
        ASSERT_NEAR(got, exact, bound) << s.n << " " << s.m << " " << s.k;
      }
    }
  }
}

// Exact int32 sums and the same final roundings: same bits as scalar.
TEST_P(Int8MatMulTest, BitIdenticalToScalarVariant) {
  const KernelContext ctx{Isa::kScalar, nullptr};
  for (int32_t group_size : kGroupSizes) {
    for (int64_t k : {1, 3, 4, 15, 16, 17, 63, 200, 1027}) {
      for (int64_t n : {1, 2, 5, 8, 9, 11}) {
        const int64_t m = 53;
        std::vector<float> x = Random(n * k, 100 + k);
        for (size_t p = 0; p < x.size(); p += 7) x[p] *= -9.0f;
        const Quantized q = Quantize(Random(m * k, 200 + k), m, k, group_size);
        std::vector<float> a(n * m), b(n * m);
        Int8MatMul(ctx, GetParam(), x.data(), q.panels(), n, m, k, a.data());
        Int8MatMul(ctx, Int8Isa::kScalar, x.data(), q.panels(), n, m, k,
                   b.data());
        ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
            << "n=" << n << " k=" << k << " group_size=" << group_size;
      }
    }
  }
}

// Per-group scales: the documented formula computed here (an fma chain of
// each group's exact sum times its scale, then x_scale) equals the kernel bit
// for bit, within the same error bound as per channel (a group's step is at
// most its channel's).
TEST_P(Int8MatMulTest, GroupedMatchesScalarReferenceAndFloat64) {
  ThreadPool pool(2);
  const KernelContext ctx{Isa::kScalar, &pool};
  const Shape shapes[] = {{1, 7, 3},     {3, 16, 16},   {5, 33, 31},
                          {9, 49, 100},  {13, 37, 129}, {1, 300, 67},
                          {33, 19, 255}, {6, 70, 1000}, {70, 130, 40}};
  uint32_t seed = 300;
  for (int32_t group_size : {4, 32, 64, 128}) {
    for (const Shape& s : shapes) {
      const std::vector<float> x = Random(s.n * s.k, seed++);
      const std::vector<float> w = Random(s.m * s.k, seed++);
      const Quantized q = Quantize(w, s.m, s.k, group_size);
      std::vector<float> out(s.n * s.m, -1.0f);
      Int8MatMul(ctx, GetParam(), x.data(), q.panels(), s.n, s.m, s.k,
                 out.data());
      for (int64_t i = 0; i < s.n; ++i) {
        std::vector<int8_t> xq(Int8PaddedK(s.k));
        const float xs = QuantizeRowInt8(Int8Isa::kScalar, x.data() + i * s.k,
                                         s.k, xq.data());
        for (int64_t j = 0; j < s.m; ++j) {
          float acc = 0.0f;
          double exact = 0.0, bound = 0.0;
          double xmax = 0.0;
          for (int64_t p = 0; p < s.k; ++p) {
            xmax = std::max(xmax, std::fabs(double{x[i * s.k + p]}));
          }
          for (int64_t g0 = 0; g0 < s.k; g0 += group_size) {
            int64_t sum = 0;
            double wmax = 0.0, wsum = 0.0, xsum = 0.0;
            for (int64_t p = g0; p < std::min(s.k, g0 + group_size); ++p) {
              sum += int64_t{xq[p]} * At(q, s.k, j, p);
              exact += double{x[i * s.k + p]} * w[j * s.k + p];
              wmax = std::max(wmax, std::fabs(double{w[j * s.k + p]}));
              wsum += std::fabs(double{w[j * s.k + p]});
              xsum += std::fabs(double{x[i * s.k + p]});
              bound +=
                  1e-6 * std::fabs(double{x[i * s.k + p]} * w[j * s.k + p]);
            }
            acc = std::fma(static_cast<float>(sum), q.Scale(s.k, j, g0), acc);
            bound += (xmax / 254) * wsum * 1.01 + (wmax / 254) * xsum * 1.01 +
                     group_size * (xmax / 254) * (wmax / 254);
          }
          const float got = out[i * s.m + j];
          ASSERT_EQ(got, acc * xs)
              << "group_size=" << group_size << " n=" << s.n << " m=" << s.m
              << " k=" << s.k << " at " << i << "," << j;
          ASSERT_NEAR(got, exact, bound) << s.n << " " << s.m << " " << s.k;
        }
      }
    }
  }
}

// A weight column 50x the rest: per channel it sets every weight's step in
// its rows; per group of 32 only its own group's. The product's error drops
// accordingly: the coarse step now covers 31 weights of a row, not 1023, so
// the (random-walk) error falls by about sqrt(1023 / 31) = 5.7. (x is 0 in
// that column, so its own rounding adds nothing.)
TEST_P(Int8MatMulTest, GroupScalesConfineALargeWeight) {
  const KernelContext ctx{Isa::kScalar, nullptr};
  const int64_t n = 4, m = 32, k = 1024;
  std::vector<float> x = Random(n * k, 61);
  std::vector<float> w = Random(m * k, 62);
  for (int64_t j = 0; j < m; ++j) w[j * k + 5] = 50.0f;
  for (int64_t i = 0; i < n; ++i) x[i * k + 5] = 0.0f;
  double err[2] = {0, 0};
  for (int g = 0; g < 2; ++g) {
    const Quantized q = Quantize(w, m, k, g == 0 ? 0 : 32);
    std::vector<float> out(n * m);
    Int8MatMul(ctx, GetParam(), x.data(), q.panels(), n, m, k, out.data());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        double exact = 0;
        for (int64_t p = 0; p < k; ++p) {
          exact += double{x[i * k + p]} * w[j * k + p];
        }
        err[g] += std::fabs(out[i * m + j] - exact);
      }
    }
  }
  EXPECT_LT(err[1] * 3, err[0])
      << "per channel " << err[0] << ", per group " << err[1];
}

// Row i alone, in a batch of 33 (every position), with 1 or 2 threads: the
// same bits; row 0 likewise for every batch size 1..37. A row of NaNs makes
// its own outputs NaN and no other row's.
void ExpectBatchInvariant(Int8Isa isa, int32_t group_size) {
  ThreadPool pool(2);
  const KernelContext threaded{Isa::kScalar, &pool};
  const KernelContext single{Isa::kScalar, nullptr};
  const int64_t n = 33, m = 70, k = 77;
  std::vector<float> x = Random(n * k, 5);
  x[4 * k + 9] = std::numeric_limits<float>::quiet_NaN();
  const Quantized q = Quantize(Random(m * k, 6), m, k, group_size);
  std::vector<float> batch(n * m), batch_single(n * m);
  Int8MatMul(threaded, isa, x.data(), q.panels(), n, m, k, batch.data());
  Int8MatMul(single, isa, x.data(), q.panels(), n, m, k, batch_single.data());
  ASSERT_EQ(0, std::memcmp(batch.data(), batch_single.data(),
                           batch.size() * sizeof(float)));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(m);
    Int8MatMul(threaded, isa, x.data() + i * k, q.panels(), 1, m, k,
               alone.data());
    for (int64_t j = 0; j < m; ++j) {
      if (i == 4) {
        ASSERT_TRUE(std::isnan(batch[i * m + j]));
        ASSERT_TRUE(std::isnan(alone[j]));
        continue;
      }
      ASSERT_FALSE(std::isnan(batch[i * m + j]));
      ASSERT_EQ(alone[j], batch[i * m + j]) << "row " << i << " col " << j;
    }
  }
  const std::vector<float> x37 = Random(37 * k, 9);
  std::vector<float> first(m);
  Int8MatMul(threaded, isa, x37.data(), q.panels(), 1, m, k, first.data());
  for (int64_t rows = 2; rows <= 37; ++rows) {
    std::vector<float> out(rows * m);
    Int8MatMul(threaded, isa, x37.data(), q.panels(), rows, m, k, out.data());
    for (int64_t j = 0; j < m; ++j) ASSERT_EQ(out[j], first[j]) << rows;
  }
}

TEST_P(Int8MatMulTest, BatchInvariant) {
  for (int32_t group_size : kGroupSizes) {
    SCOPED_TRACE(testing::Message() << "group_size " << group_size);
    ExpectBatchInvariant(GetParam(), group_size);
  }
}

// LLM.int8(): rows with outliers equal the documented formula computed here
// from the row without them; rows without outliers equal Int8MatMul; the
// outliers cut the error of a row with a large activation; the cap keeps
// the first max_outliers columns; each row's bits do not depend on the
// others (whose outliers differ).
TEST_P(Int8MatMulTest, OutliersPerRow) {
  ThreadPool pool(2);
  const KernelContext ctx{Isa::kScalar, &pool};
  const int64_t n = 9, m = 37, k = 70;
  const float threshold = 6.0f;
  std::vector<float> x = Random(n * k, 77);
  x[0 * k + 3] = 40.0f;   // row 0: two outliers
  x[0 * k + 60] = -6.0f;  // (|x| >= threshold counts)
  x[2 * k + 10] = 9.0f;   // row 2: three, capped to the first two below
  x[2 * k + 11] = -12.0f;
  x[2 * k + 50] = 30.0f;
  x[5 * k + 0] = 100.0f;  // row 5: one; rows 1, 3, 4, 6-8: none
  const std::vector<float> w = Random(m * k, 78);
  const Quantized q = Quantize(w, m, k);
  std::vector<float> out(n * m), plain(n * m);
  Int8MatMulWithOutliers(ctx, GetParam(), x.data(), q.panels(), n, m, k,
                         threshold, /*max_outliers=*/2, out.data());
  Int8MatMul(ctx, GetParam(), x.data(), q.panels(), n, m, k, plain.data());
  const std::vector<std::vector<int64_t>> outliers = {
      {3, 60}, {}, {10, 11}, {}, {}, {0}, {}, {}, {}};
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> row(x.begin() + i * k, x.begin() + (i + 1) * k);
    for (int64_t c : outliers[i]) row[c] = 0.0f;
    std::vector<int8_t> xq(Int8PaddedK(k));
    const float xs =
        QuantizeRowInt8(Int8Isa::kScalar, row.data(), k, xq.data());
    for (int64_t j = 0; j < m; ++j) {
      int32_t sum = 0;
      for (int64_t p = 0; p < k; ++p) sum += int32_t{xq[p]} * At(q, k, j, p);
      float expected = static_cast<float>(sum) * (xs * q.scales[j]);
      if (outliers[i].empty()) {
        ASSERT_EQ(out[i * m + j], plain[i * m + j]) << i << "," << j;
      } else {
        float o = 0.0f;
        for (int64_t c : outliers[i]) {
          o = std::fma(x[i * k + c], static_cast<float>(At(q, k, j, c)), o);
        }
        expected = std::fma(o, q.scales[j], expected);
      }
      ASSERT_EQ(out[i * m + j], expected) << i << "," << j;
    }
  }
  // Row 5 (one activation of 100 among values in [-1, 1]): plain int8 puts
  // the rest of the row on a step of 100/127; the outlier path does not.
  double err_plain = 0, err_outliers = 0;
  for (int64_t j = 0; j < m; ++j) {
    double exact = 0;
    for (int64_t p = 0; p < k; ++p) {
      exact += double{x[5 * k + p]} * w[j * k + p];
    }
    err_plain += std::fabs(plain[5 * m + j] - exact);
    err_outliers += std::fabs(out[5 * m + j] - exact);
  }
  EXPECT_LT(err_outliers * 4, err_plain);
  // Each row alone: the same bits.
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(m);
    Int8MatMulWithOutliers(ctx, GetParam(), x.data() + i * k, q.panels(), 1, m,
                           k, threshold, 2, alone.data());
    ASSERT_EQ(0,
              std::memcmp(alone.data(), out.data() + i * m, m * sizeof(float)))
        << "row " << i;
  }
}

// LLM.int8() with per-group scales: an outlier column is added back against
// its weight dequantized with its own group's scale.
TEST_P(Int8MatMulTest, OutliersWithGroupScales) {
  const KernelContext ctx{Isa::kScalar, nullptr};
  const int64_t n = 3, m = 21, k = 100;
  const int32_t group_size = 32;
  std::vector<float> x = Random(n * k, 91);
  x[0 * k + 40] = 20.0f;  // row 0: outliers in groups 1 and 3
  x[0 * k + 97] = -8.0f;
  const std::vector<float> w = Random(m * k, 92);
  const Quantized q = Quantize(w, m, k, group_size);
  std::vector<float> out(n * m), plain(n * m);
  Int8MatMulWithOutliers(ctx, GetParam(), x.data(), q.panels(), n, m, k, 6.0f,
                         8, out.data());
  std::vector<float> inliers = x;
  inliers[40] = inliers[97] = 0.0f;
  Int8MatMul(ctx, GetParam(), inliers.data(), q.panels(), n, m, k,
             plain.data());
  for (int64_t j = 0; j < m; ++j) {
    float o = 0.0f;
    for (int64_t c : {40, 97}) {
      const float d = static_cast<float>(At(q, k, j, c)) * q.Scale(k, j, c);
      o = std::fma(x[c], d, o);
    }
    ASSERT_EQ(out[j], plain[j] + o) << j;
    ASSERT_EQ(out[m + j], plain[m + j]) << j;  // no outliers
  }
}

TEST(Int8IsaTest, ForFloatIsaStaysWithinItsWidth) {
  EXPECT_EQ(Int8IsaFor(Isa::kScalar), Int8Isa::kScalar);
  for (Isa isa : SupportedIsas()) {
    EXPECT_TRUE(Int8IsaSupported(Int8IsaFor(isa))) << IsaName(isa);
  }
  if (IsaSupported(Isa::kAvx2)) {
    EXPECT_NE(Int8IsaFor(Isa::kAvx2), Int8Isa::kAvx512Vnni);
    EXPECT_NE(Int8IsaFor(Isa::kAvx2), Int8Isa::kScalar);
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, Int8MatMulTest,
                         testing::ValuesIn(SupportedInt8Isas()),
                         [](const testing::TestParamInfo<Int8Isa>& info) {
                           std::string name(Int8IsaName(info.param));
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace strata::cpu
