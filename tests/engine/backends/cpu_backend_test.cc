// CpuBackend's own storage and fused ops: packed weights multiply like the
// plain ones, a table keeps its rows for the embedding gather, and the
// gathered low-rank product gives exactly the bits of the per-segment
// MatMul, MatMul, Add it replaces.
#include "engine/backends/cpu/cpu_backend.h"

#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<float> Host(CpuBackend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.num_elements()));
  EXPECT_TRUE(backend.CopyToHost(t, std::span<float>(out)).ok());
  return out;
}

std::unique_ptr<CpuBackend> MakeBackend() {
  CpuBackend::Options options;
  options.num_threads = 2;
  auto backend = CpuBackend::Create(options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return *std::move(backend);
}

TEST(CpuBackendTest, TableKeepsItsRowsAndMultipliesPacked) {
  auto backend = MakeBackend();
  const int64_t vocab = 37, hidden = 20;
  const std::vector<float> table = Random(vocab * hidden, 1);
  auto packed =
      backend->UploadWeight(table, {vocab, hidden}, WeightRole::kTable);
  auto plain = backend->Upload(table, {vocab, hidden});
  ASSERT_TRUE(packed.ok() && plain.ok());
  // The gather reads rows.
  auto rows = backend->Allocate(ElementType::kF32, {2, hidden});
  ASSERT_TRUE(rows.ok());
  const std::vector<TokenId> ids = {5, 36};
  backend->Embedding(*packed, ids, &*rows);
  const std::vector<float> got = Host(*backend, *rows);
  for (int64_t i = 0; i < hidden; ++i) {
    EXPECT_EQ(got[i], table[5 * hidden + i]);
    EXPECT_EQ(got[hidden + i], table[36 * hidden + i]);
  }
  // The product agrees with the dot-product kernel's within rounding.
  auto x = backend->Upload(Random(3 * hidden, 2), {3, hidden});
  auto a = backend->Allocate(ElementType::kF32, {3, vocab});
  auto b = backend->Allocate(ElementType::kF32, {3, vocab});
  ASSERT_TRUE(x.ok() && a.ok() && b.ok());
  backend->MatMul(*x, *packed, &*a);
  backend->MatMul(*x, *plain, &*b);
  const std::vector<float> pa = Host(*backend, *a), pb = Host(*backend, *b);
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_NEAR(pa[i], pb[i], 1e-5);
}

// The gathered op against MatMul, MatMul, Add per segment, which it must
// equal bit for bit. `packed`: factors uploaded as kAdapter (packed) or as
// plain f32 tensors (Upload); the op accepts both, as the CUDA backend does.
void ExpectLowRankEqualsPerSegment(
    int64_t n, int64_t k, int64_t m, int64_t rank,
    const std::vector<std::pair<int, int>>& spans, bool packed) {
  auto backend = MakeBackend();
  const std::vector<float> x_host = Random(n * k, 3);
  const std::vector<float> base = Random(n * m, 4);
  auto x = backend->Upload(x_host, {n, k});
  ASSERT_TRUE(x.ok());
  std::vector<Tensor> as, bs;
  for (size_t s = 0; s < spans.size(); ++s) {
    const std::vector<float> a_host = Random(rank * k, 10 + s);
    const std::vector<float> b_host = Random(m * rank, 20 + s);
    auto a =
        packed ? backend->UploadWeight(a_host, {rank, k}, WeightRole::kAdapter)
               : backend->Upload(a_host, {rank, k});
    auto b =
        packed ? backend->UploadWeight(b_host, {m, rank}, WeightRole::kAdapter)
               : backend->Upload(b_host, {m, rank});
    ASSERT_TRUE(a.ok() && b.ok());
    as.push_back(*std::move(a));
    bs.push_back(*std::move(b));
  }
  std::vector<LowRankSegment> segments;
  for (size_t s = 0; s < spans.size(); ++s) {
    segments.push_back({spans[s].first, spans[s].second, &as[s], &bs[s]});
  }

  auto fused = backend->Upload(base, {n, m});
  ASSERT_TRUE(fused.ok());
  ASSERT_TRUE(backend->AddLowRank(*x, segments, &*fused));

  auto reference = backend->Upload(base, {n, m});
  ASSERT_TRUE(reference.ok());
  for (const LowRankSegment& seg : segments) {
    auto t = backend->Allocate(ElementType::kF32, {seg.num_rows, rank});
    auto u = backend->Allocate(ElementType::kF32, {seg.num_rows, m});
    ASSERT_TRUE(t.ok() && u.ok());
    backend->MatMul(x->Rows(seg.first_row, seg.num_rows), *seg.a, &*t);
    backend->MatMul(*t, *seg.b, &*u);
    Tensor y = reference->Rows(seg.first_row, seg.num_rows);
    backend->Add(*u, &y);
  }
  const std::vector<float> got = Host(*backend, *fused);
  const std::vector<float> want = Host(*backend, *reference);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0,
            std::memcmp(got.data(), want.data(), got.size() * sizeof(float)));
  EXPECT_NE(got, base);  // the products were added at all
  // Rows no segment covers keep their values.
  std::vector<bool> covered(static_cast<size_t>(n), false);
  for (auto [first, count] : spans) {
    for (int i = first; i < first + count; ++i) covered[i] = true;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (covered[i]) continue;
    for (int64_t j = 0; j < m; ++j) {
      ASSERT_EQ(got[i * m + j], base[i * m + j]) << "row " << i;
    }
  }
}

// Segments of different lengths (over and under the 8-row task size), each
// with its own packed pair.
TEST(CpuBackendTest, GatheredLowRankEqualsPerSegmentProducts) {
  ExpectLowRankEqualsPerSegment(23, 40, 33, 4, {{0, 11}, {11, 3}, {14, 9}},
                                /*packed=*/true);
}

// The shape of CudaOpsTest.AddLowRankMatchesCpu (odd k and m, three segments
// and a gap of uncovered rows) with plain f32 factors, which the CPU once
// declined while the CUDA backend accepted them.
TEST(CpuBackendTest, GatheredLowRankAcceptsPlainFactors) {
  ExpectLowRankEqualsPerSegment(29, 201, 333, 8, {{0, 5}, {5, 12}, {22, 7}},
                                /*packed=*/false);
  ExpectLowRankEqualsPerSegment(29, 201, 333, 8, {{0, 5}, {5, 12}, {22, 7}},
                                /*packed=*/true);
}

// The exit confidences the engine asks the backend for equal
// ComputeExitConfidence row by row (the CPU computes in place, rows on the
// pool), for both kinds, including a row whose maximum is tied; and the
// base-class path (a copy to the host) gives the same.
TEST(CpuBackendTest, ExitConfidencesEqualComputeExitConfidence) {
  auto backend = MakeBackend();
  const int64_t rows = 5, vocab = 301;
  std::vector<float> logits = Random(rows * vocab, 21);
  for (float& x : logits) x *= 6.0f;
  logits[2 * vocab + 7] = logits[2 * vocab + 100] = 9.0f;  // a tie at the top
  auto t = backend->Upload(logits, {rows, vocab});
  ASSERT_TRUE(t.ok());
  const std::vector<ExitConfidence> kinds = {
      ExitConfidence::kMaxProb, ExitConfidence::kMargin,
      ExitConfidence::kMargin, ExitConfidence::kMaxProb,
      ExitConfidence::kMargin};
  std::vector<float> got(rows), base(rows);
  ASSERT_TRUE(backend->ExitConfidences(*t, kinds, got).ok());
  ASSERT_TRUE(backend->Backend::ExitConfidences(*t, kinds, base).ok());
  for (int64_t i = 0; i < rows; ++i) {
    const std::span<const float> row(logits.data() + i * vocab, vocab);
    const float want =
        ComputeExitConfidence(row, kinds[i], backend->RowSoftmaxStats(row));
    EXPECT_EQ(got[i], want) << i;
    EXPECT_EQ(base[i], want) << i;
  }
  EXPECT_EQ(got[2], 0.0f);  // tied maxima: margin 0
  std::vector<float> short_out(rows - 1);
  EXPECT_FALSE(backend->ExitConfidences(*t, kinds, short_out).ok());
}

}  // namespace
}  // namespace strata
