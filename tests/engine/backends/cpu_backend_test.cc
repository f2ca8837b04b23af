// CpuBackend's own storage and fused ops: packed weights multiply like the
// plain ones, a table keeps its rows for the embedding gather, and the
// gathered low-rank product gives exactly the bits of the per-segment
// MatMul, MatMul, Add it replaces.
#include "engine/backends/cpu/cpu_backend.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "engine/exit_policy.h"
#include "gtest/gtest.h"
#include "kernels/cpu/bf16_matmul.h"
#include "kernels/cpu/int8_matmul.h"
#include "kernels/cpu/packed_matmul.h"

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

CpuBackend::Options WithQuantization(Quantization q) {
  CpuBackend::Options options;
  options.quantization = q;
  return options;
}

CpuBackend::Options Bf16Compute() {
  CpuBackend::Options options;
  options.compute = CpuBackend::Compute::kBf16;
  return options;
}

std::unique_ptr<CpuBackend> MakeBackend(CpuBackend::Options options = {}) {
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

// Weights rounded to bfloat16 values (what a bf16 checkpoint holds).
std::vector<float> Bf16Values(std::vector<float> v) {
  for (float& x : v) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    bits &= 0xffff0000u;
    std::memcpy(&x, &bits, sizeof(x));
  }
  return v;
}

// out = x * W^T through the backend, W uploaded with `role`.
std::vector<float> BackendProduct(CpuBackend& backend,
                                  const std::vector<float>& x,
                                  const std::vector<float>& w, int64_t n,
                                  int64_t m, int64_t k, WeightRole role,
                                  ElementType* type = nullptr) {
  auto wt = backend.UploadWeight(w, {m, k}, role);
  auto xt = backend.Upload(x, {n, k});
  auto out = backend.Allocate(ElementType::kF32, {n, m});
  EXPECT_TRUE(wt.ok() && xt.ok() && out.ok());
  if (type != nullptr) *type = wt->type();
  backend.MatMul(*xt, *wt, &*out);
  return Host(backend, *out);
}

// --quantization=int8 / llm.int8: Linear weights (and, by default, the LM
// head's panels) become int8 panels and multiply exactly as the kernels do
// on the same weights; the table's rows stay exact for the gather;
// quantize_tables = false keeps the table's bf16 panels; LoRA factors stay
// f32.
TEST(CpuBackendTest, Int8ModesMultiplyThroughTheInt8Kernels) {
  const int64_t n = 5, m = 37, k = 70;
  std::vector<float> x = Random(n * k, 3);
  x[2 * k + 7] = 20.0f;  // an outlier in row 2
  const std::vector<float> w = Bf16Values(Random(m * k, 4));
  std::vector<uint8_t> q(cpu::Int8PackedBytes(m, k));
  std::vector<float> scales(cpu::Int8PaddedRows(m));
  cpu::QuantizeWeightInt8(w.data(), m, k, q.data(), scales.data());
  const cpu::Int8Panels panels{q.data(), scales.data()};
  for (auto mode : {Quantization::kWeightInt8, Quantization::kLlmInt8}) {
    CpuBackend::Options options;
    options.quantization = mode;
    auto backend = MakeBackend(options);
    const cpu::KernelContext ctx{backend->isa(), nullptr};
    std::vector<float> expected(n * m);
    if (mode == Quantization::kWeightInt8) {
      cpu::Int8MatMul(ctx, x.data(), panels, n, m, k, expected.data());
    } else {
      cpu::Int8MatMulWithOutliers(ctx, cpu::Int8IsaFor(backend->isa()),
                                  x.data(), panels, n, m, k, 6.0f, 128,
                                  expected.data());
    }
    ElementType type;
    EXPECT_EQ(
        BackendProduct(*backend, x, w, n, m, k, WeightRole::kLinear, &type),
        expected);
    EXPECT_EQ(type, ElementType::kI8);
    EXPECT_EQ(BackendProduct(*backend, x, w, n, m, k, WeightRole::kTable),
              expected);
    // The table's rows are the checkpoint's values.
    auto table = backend->UploadWeight(w, {m, k}, WeightRole::kTable);
    ASSERT_TRUE(table.ok());
    EXPECT_EQ(Host(*backend, *table), w);
    // LoRA factors stay f32 panels.
    std::vector<float> f32(n * m);
    std::vector<float> packed(cpu::PackedWeightSize(m, k));
    cpu::PackWeight(w.data(), m, k, packed.data());
    cpu::PackedMatMul(ctx, x.data(), packed.data(), n, m, k, f32.data());
    EXPECT_EQ(BackendProduct(*backend, x, w, n, m, k, WeightRole::kAdapter),
              f32);
    options.quantize_tables = false;
    auto keep_tables = MakeBackend(options);
    EXPECT_EQ(BackendProduct(*keep_tables, x, w, n, m, k, WeightRole::kTable),
              f32);
  }
  // Per-group scales (--int8_group_size): the grouped kernels' results, in
  // both modes, for Linear weights and the table's panels.
  std::vector<float> grouped_scales(cpu::Int8ScaleCount(m, k, 32));
  cpu::QuantizeWeightInt8(w.data(), m, k, q.data(), grouped_scales.data(), 32);
  const cpu::Int8Panels grouped{q.data(), grouped_scales.data(), 32};
  for (auto mode : {Quantization::kWeightInt8, Quantization::kLlmInt8}) {
    CpuBackend::Options options;
    options.quantization = mode;
    options.int8_group_size = 32;
    auto backend = MakeBackend(options);
    const cpu::KernelContext ctx{backend->isa(), nullptr};
    const cpu::Int8Isa isa = cpu::Int8IsaFor(backend->isa());
    std::vector<float> expected(n * m);
    if (mode == Quantization::kWeightInt8) {
      cpu::Int8MatMul(ctx, isa, x.data(), grouped, n, m, k, expected.data());
    } else {
      cpu::Int8MatMulWithOutliers(ctx, isa, x.data(), grouped, n, m, k, 6.0f,
                                  128, expected.data());
    }
    EXPECT_EQ(BackendProduct(*backend, x, w, n, m, k, WeightRole::kLinear),
              expected);
    EXPECT_EQ(BackendProduct(*backend, x, w, n, m, k, WeightRole::kTable),
              expected);
  }
  // The plain int8 and LLM.int8() rows differ only where row 2's outlier is.
  auto int8 = MakeBackend(WithQuantization(Quantization::kWeightInt8));
  auto llm = MakeBackend(WithQuantization(Quantization::kLlmInt8));
  const std::vector<float> a =
      BackendProduct(*int8, x, w, n, m, k, WeightRole::kLinear);
  const std::vector<float> b =
      BackendProduct(*llm, x, w, n, m, k, WeightRole::kLinear);
  for (int64_t i = 0; i < n; ++i) {
    const bool same =
        std::memcmp(a.data() + i * m, b.data() + i * m, m * sizeof(float)) == 0;
    EXPECT_EQ(same, i != 2) << "row " << i;
  }
}

// --cpu_compute=bf16: bfloat16 weights go through vdpbf16ps; f32 weights
// keep the f32 panels.
TEST(CpuBackendTest, Bf16ComputeRoundsWeightsToBf16) {
  if (!cpu::Bf16DotSupported()) GTEST_SKIP() << "no AVX-512 BF16";
  auto backend = MakeBackend(Bf16Compute());
  const int64_t n = 4, m = 33, k = 41;
  const std::vector<float> x = Random(n * k, 5);
  const cpu::KernelContext ctx{backend->isa(), nullptr};
  // bf16 values as they are, f32 values rounded: both through vdpbf16ps.
  for (const std::vector<float>& w :
       {Bf16Values(Random(m * k, 6)), Random(m * k, 7)}) {
    std::vector<uint16_t> pairs(cpu::Bf16PairPackedSize(m, k));
    cpu::PackWeightBf16Pairs(w.data(), m, k, pairs.data());
    std::vector<float> expected(n * m);
    cpu::Bf16MatMul(ctx, true, x.data(), pairs.data(), n, m, k,
                    expected.data());
    ElementType type;
    EXPECT_EQ(
        BackendProduct(*backend, x, w, n, m, k, WeightRole::kLinear, &type),
        expected);
    EXPECT_EQ(type, ElementType::kBF16);
  }
}

// FromOptions (the daemon's flags) honours --quantization and --dtype=bf16
// and refuses, naming the flag, what the CPU cannot do.
TEST(CpuBackendTest, FromOptionsHonoursOrRefuses) {
  BackendOptions options;
  options.num_threads = 1;
  for (Quantization q : {Quantization::kWeightInt8, Quantization::kLlmInt8}) {
    options.quantization = q;
    absl::StatusOr<std::unique_ptr<Backend>> backend =
        CpuBackend::FromOptions(options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    const auto& cpu = static_cast<const CpuBackend&>(**backend);
    EXPECT_EQ(cpu.options().quantization, q);
    EXPECT_NE((*backend)->Description().find(QuantizationName(q)),
              std::string::npos)
        << (*backend)->Description();
  }
  options.quantization = Quantization::kWeightInt8;
  options.int8_group_size = 64;
  absl::StatusOr<std::unique_ptr<Backend>> grouped =
      CpuBackend::FromOptions(options);
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  EXPECT_EQ(static_cast<const CpuBackend&>(**grouped).options().int8_group_size,
            64);
  options.int8_group_size = 0;
  options.quantization = Quantization::kNone;
  options.dtype = ElementType::kBF16;
  absl::StatusOr<std::unique_ptr<Backend>> bf16 =
      CpuBackend::FromOptions(options);
  if (cpu::Bf16DotSupported()) {
    ASSERT_TRUE(bf16.ok()) << bf16.status();
    EXPECT_EQ(static_cast<const CpuBackend&>(**bf16).options().compute,
              CpuBackend::Compute::kBf16);
  } else {
    EXPECT_EQ(bf16.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  const struct {
    void (*set)(BackendOptions&);
    const char* flag;
  } refused[] = {
      {[](BackendOptions& o) { o.dtype = ElementType::kF16; }, "--dtype"},
      {[](BackendOptions& o) {
         o.dtype = ElementType::kBF16;
         o.quantization = Quantization::kWeightInt8;
       },
       "--dtype"},
      {[](BackendOptions& o) {
         o.quantization = Quantization::kWeightInt8;
         o.int8_group_size = 30;  // not a multiple of 4
       },
       "--int8_group_size"},
      {[](BackendOptions& o) { o.int8_group_size = 64; },  // nothing to group
       "--int8_group_size"},
      {[](BackendOptions& o) { o.device = 1; }, "--device"},
      {[](BackendOptions& o) { o.step_graphs = true; }, "--cuda_graphs"},
      {[](BackendOptions& o) { o.gpu_memory_fraction = 0.5; },
       "--gpu_memory_fraction"},
  };
  for (const auto& c : refused) {
    BackendOptions bad;
    c.set(bad);
    if (bad.dtype.has_value() && bad.quantization != Quantization::kNone &&
        !cpu::Bf16DotSupported()) {
      continue;  // refused earlier, for the missing instructions
    }
    const absl::Status status = CpuBackend::FromOptions(bad).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.flag;
    EXPECT_NE(status.message().find(c.flag), std::string::npos)
        << status.message();
  }
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
  // Hidden-state kinds are not computed from logits.
  const std::vector<ExitConfidence> hidden_kinds(rows,
                                                 ExitConfidence::kClassifier);
  EXPECT_FALSE(backend->ExitConfidences(*t, hidden_kinds, got).ok());
}

// The hidden-state measures against values worked out by hand, then the CPU
// override (in place) and the base-class path (host copies) against
// ComputeHiddenExitConfidence on random rows.
TEST(CpuBackendTest, HiddenExitConfidences) {
  // cos([3, 4], [4, 3]) = 24 / 25; classifier w = [1, 0], b = -0.5 on
  // h = [3, 4]: rms = sqrt(12.5 + eps), z = 3 / rms - 0.5.
  const float h[2] = {3.0f, 4.0f}, prev[2] = {4.0f, 3.0f};
  const float row[3] = {1.0f, 0.0f, -0.5f};
  EXPECT_NEAR(ComputeHiddenExitConfidence(ExitConfidence::kSaturation, h, prev,
                                          nullptr, 1e-5f),
              24.0f / 25.0f, 1e-6f);
  const double z = 3.0 / std::sqrt(12.5 + 1e-5) - 0.5;
  EXPECT_NEAR(ComputeHiddenExitConfidence(ExitConfidence::kClassifier, h,
                                          nullptr, row, 1e-5f),
              1.0 / (1.0 + std::exp(-z)), 1e-6);
  const float zero[2] = {0.0f, 0.0f};
  EXPECT_EQ(ComputeHiddenExitConfidence(ExitConfidence::kSaturation, h, zero,
                                        nullptr, 1e-5f),
            0.0f);

  auto backend = MakeBackend();
  const int64_t n = 6, hidden = 37, early = 2;
  const std::vector<float> state = Random(n * hidden, 31);
  const std::vector<float> prevs = Random(3 * hidden, 32);
  const std::vector<float> table = Random(early * (hidden + 1), 33);
  auto st = backend->Upload(state, {n, hidden});
  auto pv = backend->Upload(prevs, {3, hidden});
  auto cl = backend->Upload(table, {early, hidden + 1});
  ASSERT_TRUE(st.ok() && pv.ok() && cl.ok());
  // Rows 0, 1 saturation (against prev rows 0, 1), row 2 classifier.
  const std::vector<int32_t> rows = {4, 0, 5};
  const std::vector<int32_t> loops = {0, 1, 1};
  const std::vector<ExitConfidence> kinds = {ExitConfidence::kSaturation,
                                             ExitConfidence::kSaturation,
                                             ExitConfidence::kClassifier};
  std::vector<float> got(3), base(3);
  ASSERT_TRUE(
      backend
          ->HiddenExitConfidences(*st, rows, *pv, *cl, loops, kinds, 1e-5f, got)
          .ok());
  ASSERT_TRUE(backend
                  ->Backend::HiddenExitConfidences(*st, rows, *pv, *cl, loops,
                                                   kinds, 1e-5f, base)
                  .ok());
  for (size_t j = 0; j < rows.size(); ++j) {
    const float want = ComputeHiddenExitConfidence(
        kinds[j],
        std::span<const float>(state.data() + rows[j] * hidden, hidden),
        prevs.data() + j * hidden, table.data() + loops[j] * (hidden + 1),
        1e-5f);
    EXPECT_EQ(got[j], want) << j;
    EXPECT_EQ(base[j], want) << j;
  }
  // A row outside the state, a loop outside the classifier, a logit kind.
  const std::vector<int32_t> bad_rows = {4, 0, 6};
  EXPECT_FALSE(backend
                   ->HiddenExitConfidences(*st, bad_rows, *pv, *cl, loops,
                                           kinds, 1e-5f, got)
                   .ok());
  const std::vector<int32_t> bad_loops = {0, 1, 2};
  EXPECT_FALSE(backend
                   ->HiddenExitConfidences(*st, rows, *pv, *cl, bad_loops,
                                           kinds, 1e-5f, got)
                   .ok());
  const std::vector<ExitConfidence> logit_kinds(3, ExitConfidence::kMargin);
  EXPECT_FALSE(backend
                   ->HiddenExitConfidences(*st, rows, *pv, *cl, loops,
                                           logit_kinds, 1e-5f, got)
                   .ok());
}

}  // namespace
}  // namespace strata
