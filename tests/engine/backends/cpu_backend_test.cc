// CpuBackend's own storage and fused ops: packed weights multiply like the
// plain ones, a table keeps its rows for the embedding gather, and the
// gathered low-rank product gives exactly the bits of the per-segment
// MatMul, MatMul, Add it replaces.
#include "engine/backends/cpu/cpu_backend.h"

#include <algorithm>
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

// A moved-from tensor is empty, like a default one: code that tests
// empty() after a move (a recycled state's map node, HiddenStateStore) must
// not see the old data pointer or shape.
TEST(TensorTest, AMovedFromTensorIsEmpty) {
  auto backend = MakeBackend();
  auto t = backend->Allocate(ElementType::kF32, {3, 4});
  ASSERT_TRUE(t.ok());
  const void* data = t->data();
  Tensor moved(*std::move(t));
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(moved.num_elements(), 12);
  EXPECT_TRUE(t->empty());
  EXPECT_EQ(t->data(), nullptr);
  EXPECT_EQ(t->rank(), 0u);
  Tensor assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.data(), data);
  EXPECT_TRUE(moved.empty());
  EXPECT_EQ(moved.storage(), nullptr);
  // Views share the data and keep their own shape.
  Tensor view = assigned.Rows(1, 2);
  EXPECT_EQ(view.data(), static_cast<const float*>(data) + 4);
  EXPECT_EQ(view.dim(0), 2);
  EXPECT_EQ(view.dim(1), 4);
  EXPECT_EQ(assigned.dim(0), 3);
}

// Host sampling reads the CPU's logits in place (HostView) instead of
// copying them: the view is the tensor's own memory, and what CopyToHost
// would have copied.
TEST(CpuBackendTest, HostViewIsTheTensorsMemory) {
  auto backend = MakeBackend();
  auto t = backend->Upload({1, 2, 3, 4, 5, 6}, {2, 3});
  ASSERT_TRUE(t.ok());
  const std::span<const float> view = backend->HostView(*t);
  ASSERT_EQ(view.size(), 6u);
  EXPECT_EQ(view.data(), t->data());
  std::vector<float> copied(6);
  ASSERT_TRUE(backend->CopyToHost(*t, copied).ok());
  EXPECT_TRUE(std::equal(view.begin(), view.end(), copied.begin()));
  const Tensor rows = t->Rows(1, 1);
  EXPECT_EQ(backend->HostView(rows).data(), view.data() + 3);
  EXPECT_EQ(backend->HostView(rows).size(), 3u);
  EXPECT_TRUE(backend->HostView(Tensor()).empty());
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
// A slice of a weight (WeightRows) multiplies to the bits of those rows
// uploaded alone, in every panel format (f32, bf16, bf16 compute, int8 per
// channel and per group, LLM.int8() with outliers), for 1 to 9 rows;
// SplitColumns hands each part its columns of a fused product.
TEST(CpuBackendTest, WeightRowsMultiplyLikeTheRowsAlone) {
  const int64_t k = 72;
  const std::vector<int64_t> parts = {48, 16, 21};  // the last ends the weight
  const int64_t m = 48 + 16 + 21;
  std::vector<CpuBackend::Options> modes(6);
  modes[2] = WithQuantization(Quantization::kWeightInt8);
  modes[3] = modes[2];
  modes[3].int8_group_size = 32;
  modes[4] = WithQuantization(Quantization::kLlmInt8);
  modes[4].llm_int8_threshold = 1.5f;  // outliers in most rows
  if (cpu::Bf16DotSupported()) modes[5] = Bf16Compute();
  for (size_t mode = 0; mode < modes.size(); ++mode) {
    SCOPED_TRACE(testing::Message() << "mode " << mode);
    auto backend = MakeBackend(modes[mode]);
    ASSERT_EQ(backend->WeightRowAlignment(), 16);
    // Mode 1 uploads bf16-exact values (bf16 panels); mode 0 f32 ones.
    const std::vector<float> w =
        mode == 0 ? Random(m * k, 7) : Bf16Values(Random(m * k, 7));
    auto whole = backend->UploadWeight(w, {m, k}, WeightRole::kLinear);
    ASSERT_TRUE(whole.ok()) << whole.status();
    for (int64_t n : {1, 3, 9}) {
      const std::vector<float> x = Random(n * k, 8 + n);
      auto xt = backend->Upload(x, {n, k});
      auto fused = backend->Allocate(ElementType::kF32, {n, m});
      ASSERT_TRUE(xt.ok() && fused.ok());
      backend->MatMul(*xt, *whole, &*fused);
      std::vector<Tensor> outs;
      std::vector<Tensor*> out_ptrs;
      int64_t begin = 0;
      for (int64_t rows : parts) {
        auto slice = backend->WeightRows(*whole, begin, rows);
        ASSERT_TRUE(slice.ok()) << slice.status();
        EXPECT_EQ(slice->shape(), (std::vector<int64_t>{rows, k}));
        auto out = backend->Allocate(ElementType::kF32, {n, rows});
        ASSERT_TRUE(out.ok());
        backend->MatMul(*xt, *slice, &*out);
        // The rows uploaded alone.
        const std::vector<float> alone =
            BackendProduct(*backend, x,
                           std::vector<float>(w.begin() + begin * k,
                                              w.begin() + (begin + rows) * k),
                           n, rows, k, WeightRole::kLinear);
        EXPECT_EQ(Host(*backend, *out), alone) << "rows from " << begin;
        outs.push_back(*std::move(out));
        begin += rows;
      }
      // SplitColumns of the fused product gives each part the same bits.
      std::vector<Tensor> split;
      for (int64_t rows : parts) {
        auto t = backend->Allocate(ElementType::kF32, {n, rows});
        ASSERT_TRUE(t.ok());
        split.push_back(*std::move(t));
      }
      for (Tensor& t : split) out_ptrs.push_back(&t);
      backend->SplitColumns(*fused, out_ptrs);
      for (size_t p = 0; p < parts.size(); ++p) {
        EXPECT_EQ(Host(*backend, split[p]), Host(*backend, outs[p]))
            << "part " << p;
      }
    }
  }
}

TEST(CpuBackendTest, WeightRowsRefusesSlicesOffThePanels) {
  auto backend = MakeBackend();
  const int64_t m = 40, k = 8;
  auto w = backend->UploadWeight(Random(m * k, 1), {m, k}, WeightRole::kLinear);
  auto table =
      backend->UploadWeight(Random(m * k, 1), {m, k}, WeightRole::kTable);
  auto plain = backend->Upload(Random(m * k, 1), {m, k});
  ASSERT_TRUE(w.ok() && table.ok() && plain.ok());
  EXPECT_TRUE(backend->WeightRows(*w, 16, 24).ok());  // to the end
  EXPECT_TRUE(backend->WeightRows(*w, 0, 32).ok());
  for (auto [begin, count] : std::vector<std::pair<int64_t, int64_t>>{
           {8, 16}, {0, 20}, {16, 25}, {-16, 16}, {0, 0}}) {
    const absl::StatusOr<Tensor> slice = backend->WeightRows(*w, begin, count);
    EXPECT_EQ(slice.status().code(), absl::StatusCode::kInvalidArgument)
        << begin << " " << count;
  }
  EXPECT_EQ(backend->WeightRows(*table, 0, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend->WeightRows(*plain, 0, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

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

// A group's stacked A (AddLowRankGroup) adds to every part the bits that
// AddLowRank with the part's own A gives: three parts of different widths,
// segments over and under the 8-row task size and a row no segment covers.
TEST(CpuBackendTest, LowRankGroupEqualsAddLowRankPerPart) {
  auto backend = MakeBackend();
  const int64_t n = 24, k = 40, rank = 8;
  const std::vector<int64_t> widths = {48, 16, 21};
  const std::vector<std::pair<int, int>> spans = {{0, 11}, {11, 3}, {15, 9}};
  auto x = backend->Upload(Random(n * k, 3), {n, k});
  ASSERT_TRUE(x.ok());
  std::vector<Tensor> stacked, as, bs;  // as, bs: [segment * 3 + part]
  for (size_t s = 0; s < spans.size(); ++s) {
    std::vector<float> stacked_host;
    for (size_t p = 0; p < widths.size(); ++p) {
      const std::vector<float> a_host = Random(rank * k, 10 + 3 * s + p);
      stacked_host.insert(stacked_host.end(), a_host.begin(), a_host.end());
      auto a = backend->UploadWeight(a_host, {rank, k}, WeightRole::kAdapter);
      auto b = backend->UploadWeight(Random(widths[p] * rank, 30 + 3 * s + p),
                                     {widths[p], rank}, WeightRole::kAdapter);
      ASSERT_TRUE(a.ok() && b.ok());
      as.push_back(*std::move(a));
      bs.push_back(*std::move(b));
    }
    auto st = backend->UploadWeight(std::move(stacked_host), {3 * rank, k},
                                    WeightRole::kAdapter);
    ASSERT_TRUE(st.ok());
    stacked.push_back(*std::move(st));
  }
  std::vector<LowRankGroupSegment> groups;
  for (size_t s = 0; s < spans.size(); ++s) {
    groups.push_back({spans[s].first,
                      spans[s].second,
                      &stacked[s],
                      {&bs[3 * s], &bs[3 * s + 1], &bs[3 * s + 2]}});
  }
  std::vector<std::vector<float>> bases;
  std::vector<Tensor> grouped, apart;
  for (size_t p = 0; p < widths.size(); ++p) {
    bases.push_back(Random(n * widths[p], 50 + p));
    auto g = backend->Upload(bases[p], {n, widths[p]});
    auto a = backend->Upload(bases[p], {n, widths[p]});
    ASSERT_TRUE(g.ok() && a.ok());
    grouped.push_back(*std::move(g));
    apart.push_back(*std::move(a));
  }
  Tensor* const outs[] = {&grouped[0], &grouped[1], &grouped[2]};
  ASSERT_TRUE(backend->AddLowRankGroup(*x, groups, outs));
  for (size_t p = 0; p < widths.size(); ++p) {
    std::vector<LowRankSegment> segments;
    for (size_t s = 0; s < spans.size(); ++s) {
      segments.push_back(
          {spans[s].first, spans[s].second, &as[3 * s + p], &bs[3 * s + p]});
    }
    ASSERT_TRUE(backend->AddLowRank(*x, segments, &apart[p]));
    const std::vector<float> got = Host(*backend, grouped[p]);
    EXPECT_EQ(got, Host(*backend, apart[p])) << "part " << p;
    EXPECT_NE(got, bases[p]) << "part " << p;
    // Row 14 is in no segment.
    for (int64_t j = 0; j < widths[p]; ++j) {
      EXPECT_EQ(got[14 * widths[p] + j], bases[p][14 * widths[p] + j]);
    }
  }
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
