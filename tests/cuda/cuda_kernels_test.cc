// Every CUDA op against the CPU op on random inputs of awkward shapes (odd
// widths, partial KV blocks, GQA ratios, contexts longer than one decode
// split), through the Backend interface both implement. Tolerances are per
// weight type: f16 ~1e-3 relative, bf16 ~8e-3, int8 ~3e-2 (see docs/cuda.md).
// Without a GPU every test that needs one is skipped with the reason.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/backends/backend.h"
#include "engine/backends/backend_options.h"
#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cuda/cuda_backend.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "kernels/cuda/sampling.h"
#include "tests/cuda/cuda_test_util.h"

namespace strata {
namespace {

using testing_cuda::MakeCpu;
using testing_cuda::RandomVector;
using testing_cuda::RelativeMaxError;
using testing_cuda::ToHost;

// Runs without a GPU: the device RNG is the CPU sampler's, bit for bit.
TEST(CudaSamplingRng, MatchesSamplerUniform) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefcafef00dull}) {
    for (uint64_t i = 0; i < 100; ++i) {
      EXPECT_EQ(cuda::DeviceUniformOnHost(seed, i), Sampler::Uniform(seed, i));
    }
  }
}

// Runs without a GPU: asking for cuda is a clear startup error.
TEST(CudaBackendCreate, NoDeviceIsFailedPrecondition) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) != nullptr) {
    GTEST_SKIP() << "a CUDA device is present";
  }
  ModelRunner::Options options;
  options.model_dir = std::string(STRATA_SOURCE_DIR) + "/models/strata-tiny";
  options.backend.name = "cuda";
  const absl::Status status = ModelRunner::Create(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("no CUDA device"), std::string::npos)
      << status;
}

// The dtype and quantization names parse once (ParseBackendOptions) into
// the CUDA backend's options.
absl::StatusOr<CudaBackend::Options> ParseCudaOptions(
    std::string_view dtype, std::string_view quantization) {
  absl::StatusOr<BackendOptions> parsed =
      ParseBackendOptions("cuda", dtype, quantization);
  if (!parsed.ok()) return parsed.status();
  return CudaBackend::OptionsFrom(*parsed);
}

TEST(CudaBackendOptions, ParsesNames) {
  EXPECT_TRUE(ParseCudaOptions("bf16", "none").ok());
  EXPECT_TRUE(ParseCudaOptions("f16", "llm.int8").ok());
  EXPECT_EQ(ParseCudaOptions("f32", "none").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCudaOptions("bf16", "int4").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Uploads host data as an f32 activation on both backends.
struct Pair {
  Tensor cpu, gpu;
};
Pair UploadBoth(Backend& cpu, Backend& gpu, const std::vector<float>& v,
                std::vector<int64_t> shape) {
  return {*cpu.Upload(v, shape), *gpu.Upload(v, shape)};
}

struct MatMulCase {
  const char* dtype;
  const char* quantization;
  int64_t n, m, k;
  double tolerance;
};

class CudaMatMulTest : public testing::TestWithParam<MatMulCase> {};

TEST_P(CudaMatMulTest, MatchesCpu) {
  const MatMulCase c = GetParam();
  CudaBackend::Options options = *ParseCudaOptions(c.dtype, c.quantization);
  STRATA_REQUIRE_CUDA(gpu, options);
  auto cpu = MakeCpu();
  std::vector<float> x = RandomVector(c.n * c.k, 1);
  const std::vector<float> w = RandomVector(c.m * c.k, 2, 0.05f);
  if (std::string(c.quantization) == "llm.int8") {
    // Two outlier feature dims, as LLM.int8() sees in real models.
    for (int64_t i = 0; i < c.n; ++i) {
      x[i * c.k + 3] = 20.0f + i;
      x[i * c.k + c.k - 2] = -12.0f;
    }
  }
  Tensor xc = *cpu->Upload(x, {c.n, c.k});
  Tensor xg = *gpu->Upload(x, {c.n, c.k});
  Tensor wc = *cpu->Upload(w, {c.m, c.k});
  Tensor wg = *gpu->UploadWeight(w, {c.m, c.k}, WeightRole::kLinear);
  Tensor oc = *cpu->Allocate(ElementType::kF32, {c.n, c.m});
  Tensor og = *gpu->Allocate(ElementType::kF32, {c.n, c.m});
  cpu->MatMul(xc, wc, &oc);
  gpu->MatMul(xg, wg, &og);
  const double err = RelativeMaxError(ToHost(*gpu, og), ToHost(*cpu, oc));
  EXPECT_LT(err, c.tolerance) << c.dtype << " " << c.quantization
                              << " n=" << c.n << " m=" << c.m << " k=" << c.k;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMatMulTest,
    testing::Values(MatMulCase{"f16", "none", 1, 96, 64, 2e-3},
                    MatMulCase{"f16", "none", 7, 100, 36, 2e-3},
                    MatMulCase{"bf16", "none", 33, 257, 128, 1e-2},
                    MatMulCase{"f16", "int8", 1, 200, 256, 3e-2},
                    MatMulCase{"bf16", "int8", 5, 64, 40, 3e-2},
                    MatMulCase{"f16", "int8", 40, 128, 96, 3e-2},
                    MatMulCase{"f16", "llm.int8", 3, 128, 256, 4e-2},
                    MatMulCase{"bf16", "llm.int8", 64, 256, 512, 4e-2},
                    // k % 4 != 0: LLM.int8 falls back to weight-only int8.
                    MatMulCase{"f16", "llm.int8", 2, 64, 30, 4e-2}),
    // Index names: the parameters are structs with pointers, whose bytes
    // gtest would otherwise print into the name (unstable under ASLR).
    [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(CudaOpsTest, ElementwiseMatchCpu) {
  STRATA_REQUIRE_CUDA(gpu);
  auto cpu = MakeCpu();
  const int64_t n = 5, h = 131, vocab = 37;
  // Embedding from a bf16 table.
  const std::vector<float> table = RandomVector(vocab * h, 3);
  Tensor tc = *cpu->Upload(table, {vocab, h});
  Tensor tg = *gpu->UploadWeight(table, {vocab, h}, WeightRole::kTable);
  const std::vector<TokenId> ids = {0, 36, 5, 5, 17};
  Tensor ec = *cpu->Allocate(ElementType::kF32, {n, h});
  Tensor eg = *gpu->Allocate(ElementType::kF32, {n, h});
  cpu->Embedding(tc, ids, &ec);
  gpu->Embedding(tg, ids, &eg);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, eg), ToHost(*cpu, ec)), 8e-3);

  // Add, AddBias, SiluMul, RmsNorm, AddRmsNorm, GatherRows (f32: tight).
  Pair x = UploadBoth(*cpu, *gpu, RandomVector(n * h, 4), {n, h});
  Pair y = UploadBoth(*cpu, *gpu, RandomVector(n * h, 5), {n, h});
  Pair bias = UploadBoth(*cpu, *gpu, RandomVector(h, 6), {h});
  Pair weight = UploadBoth(*cpu, *gpu, RandomVector(h, 7), {h});
  Pair out = {*cpu->Allocate(ElementType::kF32, {n, h}),
              *gpu->Allocate(ElementType::kF32, {n, h})};
  cpu->AddBias(bias.cpu, &x.cpu);
  gpu->AddBias(bias.gpu, &x.gpu);
  cpu->AddRmsNorm(y.cpu, weight.cpu, 1e-5f, &x.cpu, &out.cpu);
  gpu->AddRmsNorm(y.gpu, weight.gpu, 1e-5f, &x.gpu, &out.gpu);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, x.gpu), ToHost(*cpu, x.cpu)), 1e-6);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, out.gpu), ToHost(*cpu, out.cpu)),
            1e-5);
  cpu->SiluMul(x.cpu, y.cpu, &out.cpu);
  gpu->SiluMul(x.gpu, y.gpu, &out.gpu);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, out.gpu), ToHost(*cpu, out.cpu)),
            1e-5);
  cpu->RmsNorm(out.cpu, weight.cpu, 1e-6f, &out.cpu);
  gpu->RmsNorm(out.gpu, weight.gpu, 1e-6f, &out.gpu);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, out.gpu), ToHost(*cpu, out.cpu)),
            1e-5);
  const std::vector<int32_t> rows = {4, 0, 4};
  Pair gathered = {*cpu->Allocate(ElementType::kF32, {3, h}),
                   *gpu->Allocate(ElementType::kF32, {3, h})};
  cpu->GatherRows(out.cpu, rows, &gathered.cpu);
  gpu->GatherRows(out.gpu, rows, &gathered.gpu);
  EXPECT_EQ(ToHost(*gpu, gathered.gpu), ToHost(*cpu, gathered.cpu));
}

// The gathered, segmented LoRA product against the CPU's: three segments
// with their own pairs, a gap of rows no segment covers (left unchanged),
// awkward sizes (k, m not multiples of 32), and a rank past the kernel's
// limit, which must decline so the caller falls back to GEMMs.
TEST(CudaOpsTest, AddLowRankMatchesCpu) {
  STRATA_REQUIRE_CUDA(gpu);
  auto cpu = MakeCpu();
  const int64_t n = 29, k = 201, m = 333, r = 8;
  Pair x = UploadBoth(*cpu, *gpu, RandomVector(n * k, 20), {n, k});
  const std::vector<float> base = RandomVector(n * m, 21);
  std::vector<Tensor> ac, ag, bc, bg;
  for (int s = 0; s < 3; ++s) {
    const std::vector<float> a = RandomVector(r * k, 30 + s, 0.1f);
    const std::vector<float> b = RandomVector(m * r, 40 + s, 0.1f);
    ac.push_back(*cpu->Upload(a, {r, k}));
    ag.push_back(*gpu->UploadWeight(a, {r, k}, WeightRole::kAdapter));
    bc.push_back(*cpu->Upload(b, {m, r}));
    bg.push_back(*gpu->UploadWeight(b, {m, r}, WeightRole::kAdapter));
  }
  // Rows [0, 5) loop 0, [5, 17) loop 1, [17, 22) nothing, [22, 29) loop 2.
  const int32_t spans[3][2] = {{0, 5}, {5, 12}, {22, 7}};
  std::vector<LowRankSegment> sc, sg;
  for (int s = 0; s < 3; ++s) {
    sc.push_back({spans[s][0], spans[s][1], &ac[s], &bc[s]});
    sg.push_back({spans[s][0], spans[s][1], &ag[s], &bg[s]});
  }
  Pair out = UploadBoth(*cpu, *gpu, base, {n, m});
  ASSERT_TRUE(cpu->AddLowRank(x.cpu, sc, &out.cpu));
  ASSERT_TRUE(gpu->AddLowRank(x.gpu, sg, &out.gpu));
  const std::vector<float> got = ToHost(*gpu, out.gpu);
  const std::vector<float> want = ToHost(*cpu, out.cpu);
  // f32 throughout; only the summation order differs.
  EXPECT_LT(RelativeMaxError(got, want), 1e-5);
  for (int64_t i = 17 * m; i < 22 * m; ++i) ASSERT_EQ(got[i], base[i]) << i;
  EXPECT_NE(got, base);

  const int64_t big = 257;  // > cuda::kMaxLowRank
  Tensor a_big = *gpu->UploadWeight(RandomVector(big * k, 50), {big, k},
                                    WeightRole::kAdapter);
  Tensor b_big = *gpu->UploadWeight(RandomVector(m * big, 51), {m, big},
                                    WeightRole::kAdapter);
  const LowRankSegment too_big[] = {{0, 3, &a_big, &b_big}};
  EXPECT_FALSE(gpu->AddLowRank(x.gpu, too_big, &out.gpu));
  EXPECT_EQ(ToHost(*gpu, out.gpu), got);  // declined: nothing written
}

// Exit confidences on the device against the CPU's (f32 sums in another
// order): both kinds, a tied maximum, a one-token vocabulary.
TEST(CudaOpsTest, ExitConfidencesMatchCpu) {
  STRATA_REQUIRE_CUDA(gpu);
  auto cpu = MakeCpu();
  for (int64_t vocab :
       {int64_t{1}, int64_t{37}, int64_t{4112}, int64_t{32000}}) {
    const int64_t rows = 6;
    std::vector<float> logits = RandomVector(rows * vocab, 60, 4.0f);
    if (vocab > 100) logits[3 * vocab + 5] = logits[3 * vocab + 90] = 30.0f;
    Pair t = UploadBoth(*cpu, *gpu, logits, {rows, vocab});
    std::vector<ExitConfidence> kinds;
    for (int64_t i = 0; i < rows; ++i) {
      kinds.push_back(i % 2 == 0 ? ExitConfidence::kMaxProb
                                 : ExitConfidence::kMargin);
    }
    std::vector<float> want(rows), got(rows);
    ASSERT_TRUE(cpu->ExitConfidences(t.cpu, kinds, want).ok());
    ASSERT_TRUE(gpu->ExitConfidences(t.gpu, kinds, got).ok());
    for (int64_t i = 0; i < rows; ++i) {
      EXPECT_NEAR(got[i], want[i], 2e-5) << "vocab " << vocab << " row " << i;
    }
  }
}

TEST(CudaOpsTest, RopeMatchesCpu) {
  STRATA_REQUIRE_CUDA(gpu);
  auto cpu = MakeCpu();
  const int64_t n = 6, heads = 3, head_dim = 40, max_pos = 5000;
  std::vector<float> table(max_pos * head_dim);
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int64_t i = 0; i < head_dim / 2; ++i) {
      const float angle =
          static_cast<float>(p) * std::pow(10000.0f, -2.0f * i / head_dim);
      table[p * head_dim + i] = std::cos(angle);
      table[p * head_dim + head_dim / 2 + i] = std::sin(angle);
    }
  }
  Pair t = UploadBoth(*cpu, *gpu, table, {max_pos, head_dim});
  Pair x = UploadBoth(*cpu, *gpu, RandomVector(n * heads * head_dim, 8),
                      {n, heads * head_dim});
  const std::vector<int32_t> positions = {0, 1, 17, 4095, 4999, 3};
  cpu->Rope(t.cpu, positions, head_dim, &x.cpu);
  gpu->Rope(t.gpu, positions, head_dim, &x.gpu);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, x.gpu), ToHost(*cpu, x.cpu)), 1e-6);
}

struct AttentionCase {
  int32_t num_heads, num_kv_heads, head_dim, block_size;
  // (cached prefix length, new tokens) per sequence
  std::vector<std::pair<int32_t, int32_t>> sequences;
};

class CudaAttentionTest : public testing::TestWithParam<AttentionCase> {};

// Writes random K/V for every position of every sequence through WriteKv
// (prefix and new tokens), then compares attention of the new tokens. The
// caches are compared as written (f16 on the GPU vs f32 on the CPU, so the
// CPU gets the f16-rounded K/V to isolate the attention math).
TEST_P(CudaAttentionTest, MatchesCpu) {
  const AttentionCase c = GetParam();
  CudaBackend::Options options;
  options.dtype = ElementType::kF16;
  STRATA_REQUIRE_CUDA(gpu, options);
  auto cpu = MakeCpu();
  AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, c.block_size,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;

  // Block tables: shuffled physical blocks.
  int32_t total_blocks = 0;
  for (auto [prefix, fresh] : c.sequences) {
    total_blocks += (prefix + fresh + c.block_size - 1) / c.block_size;
  }
  std::vector<int32_t> physical(total_blocks + 3);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), std::mt19937(9));
  std::vector<std::vector<int32_t>> tables;
  int32_t next = 0;
  for (auto [prefix, fresh] : c.sequences) {
    const int32_t blocks = (prefix + fresh + c.block_size - 1) / c.block_size;
    tables.emplace_back(physical.begin() + next,
                        physical.begin() + next + blocks);
    next += blocks;
  }
  const std::vector<int64_t> cache_shape = {
      static_cast<int64_t>(physical.size()), c.num_kv_heads, c.block_size,
      c.head_dim};
  Tensor kc = *cpu->Allocate(ElementType::kF32, cache_shape);
  Tensor vc = *cpu->Allocate(ElementType::kF32, cache_shape);
  Tensor kg = *gpu->Allocate(ElementType::kF16, cache_shape);
  Tensor vg = *gpu->Allocate(ElementType::kF16, cache_shape);

  // All positions' K/V, written in one WriteKv; f16-rounded for the CPU.
  std::vector<int32_t> slots;
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    const int32_t len = c.sequences[s].first + c.sequences[s].second;
    for (int32_t p = 0; p < len; ++p) {
      slots.push_back(tables[s][p / c.block_size] * c.block_size +
                      p % c.block_size);
    }
  }
  const int64_t total = static_cast<int64_t>(slots.size());
  auto round16 = [](std::vector<float> v) {
    // Round-trip through the GPU's f16 rounding by value: emulate with the
    // nearest representable half (10-bit mantissa).
    for (float& x : v) {
      int e = 0;
      const float m = std::frexp(x, &e);
      x = std::ldexp(std::nearbyint(m * 2048.0f) / 2048.0f, e);
    }
    return v;
  };
  const std::vector<float> k = round16(RandomVector(total * kv_dim, 10));
  const std::vector<float> v = round16(RandomVector(total * kv_dim, 11));
  Pair kt = UploadBoth(*cpu, *gpu, k, {total, kv_dim});
  Pair vt = UploadBoth(*cpu, *gpu, v, {total, kv_dim});
  cpu->WriteKv(kt.cpu, vt.cpu, slots, shape, &kc, &vc);
  gpu->WriteKv(kt.gpu, vt.gpu, slots, shape, &kg, &vg);

  // Queries for the new tokens only.
  std::vector<SequenceSlice> slices;
  int32_t rows = 0;
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    slices.push_back({rows, c.sequences[s].second, c.sequences[s].first,
                      std::span<const int32_t>(tables[s])});
    rows += c.sequences[s].second;
  }
  Pair q =
      UploadBoth(*cpu, *gpu, RandomVector(rows * q_dim, 12), {rows, q_dim});
  Pair out = {*cpu->Allocate(ElementType::kF32, {rows, q_dim}),
              *gpu->Allocate(ElementType::kF32, {rows, q_dim})};
  cpu->PagedAttention(q.cpu, kc, vc, shape, slices, &out.cpu);
  gpu->PagedAttention(q.gpu, kg, vg, shape, slices, &out.gpu);
  EXPECT_LT(RelativeMaxError(ToHost(*gpu, out.gpu), ToHost(*cpu, out.cpu)),
            2e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest,
    testing::Values(
        // Decode only: MHA, odd prefixes, partial blocks.
        AttentionCase{4, 4, 64, 16, {{0, 1}, {6, 1}, {33, 1}}},
        // GQA 4:1 and 8:1, head_dim 128 and 80 (not a multiple of 32).
        AttentionCase{8, 2, 128, 16, {{100, 1}, {15, 1}}},
        AttentionCase{16, 2, 80, 8, {{57, 1}}},
        // Long contexts: several decode splits merged (> 512 keys).
        AttentionCase{4, 1, 64, 16, {{1500, 1}, {511, 1}, {512, 1}}},
        // Prefill chunks, with and without a cached prefix, mixed with decode.
        AttentionCase{8, 2, 64, 16, {{0, 37}, {20, 5}, {300, 1}}},
        AttentionCase{4, 4, 32, 4, {{13, 19}, {0, 2}}}),
    // Index names: the parameters are structs with pointers, whose bytes
    // gtest would otherwise print into the name (unstable under ASLR).
    [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(CudaSamplingTest, MatchesCpuSampler) {
  STRATA_REQUIRE_CUDA(gpu);
  const std::unique_ptr<CpuBackend> host = MakeCpu();
  const int32_t vocab = 5003;
  std::vector<SamplingParams> params(6);
  params[0].temperature = 0.0f;  // greedy
  params[1].temperature = 0.8f;
  params[1].seed = 7;
  params[2].temperature = 1.0f;
  params[2].top_k = 40;
  params[2].seed = 9;
  params[3].temperature = 0.7f;
  params[3].top_p = 0.9f;
  params[3].seed = 11;
  params[4].temperature = 1.2f;
  params[4].min_p = 0.05f;
  params[4].repetition_penalty = 1.3f;
  params[4].frequency_penalty = 0.5f;
  params[4].presence_penalty = 0.2f;
  params[4].seed = 13;
  params[5].temperature = 0.0f;
  params[5].repetition_penalty = 2.0f;
  const std::vector<TokenId> prompt = {1, 2, 3, 4000};
  const std::vector<TokenId> output = {3, 3, 17, 9999, 4000};
  const int r = static_cast<int>(params.size());
  int agree = 0, total = 0;
  for (uint32_t trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits =
        RandomVector(r * vocab, 100 + trial, 3.0f);
    Tensor lg = *gpu->Upload(logits, {r, vocab});
    std::vector<SampleRow> rows;
    for (const SamplingParams& p : params) rows.push_back({&p, prompt, output});
    absl::StatusOr<std::vector<SampledToken>> got = gpu->Sample(lg, rows);
    ASSERT_TRUE(got.ok()) << got.status();
    for (int i = 0; i < r; ++i) {
      const SampledToken want = Sampler::Sample(
          *host, std::span<const float>(logits).subspan(i * vocab, vocab),
          params[i], prompt, output);
      if (params[i].temperature == 0.0f) {
        EXPECT_EQ((*got)[i].token, want.token) << "greedy row " << i;
      }
      EXPECT_NEAR((*got)[i].logprob,
                  logits[i * vocab + (*got)[i].token] -
                      (logits[i * vocab + want.token] - want.logprob),
                  1e-3);
      agree += (*got)[i].token == want.token;
      ++total;
    }
  }
  // Seeded draws agree except where f32 rounding moves a boundary.
  EXPECT_GE(agree, total * 9 / 10) << agree << " of " << total;
}

}  // namespace
}  // namespace strata
