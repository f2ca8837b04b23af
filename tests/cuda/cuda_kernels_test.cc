// Every CUDA op against the CPU op on random inputs of awkward shapes (odd
// widths, partial KV blocks, GQA ratios, contexts longer than one decode
// split), through the Backend interface both implement. Tolerances are per
// weight type: f16 ~1e-3 relative, bf16 ~8e-3, int8 ~3e-2 (see docs/cuda.md).
// Without a GPU every test that needs one is skipped with the reason.
#include <cuda_runtime.h>

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
#include "kernels/cuda/int8_gemv.h"
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
  options.model_dir = testing_cuda::ModelDir("strata-tiny");
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
  // Per-group int8 scales are CPU only: refused, naming the flag.
  absl::StatusOr<BackendOptions> grouped =
      ParseBackendOptions("cuda", "bf16", "int8");
  ASSERT_TRUE(grouped.ok());
  grouped->int8_group_size = 64;
  const absl::Status status = CudaBackend::OptionsFrom(*grouped).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--int8_group_size"), std::string::npos);
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

// The CUDA product in mode c against the CPU backend's in `cpu_mode` (f32
// compute), within c.tolerance of the CPU's largest output.
void ExpectMatMulMatchesCpu(const MatMulCase& c, Quantization cpu_mode) {
  CudaBackend::Options options = *ParseCudaOptions(c.dtype, c.quantization);
  STRATA_REQUIRE_CUDA(gpu, options);
  auto cpu = MakeCpu(cpu_mode);
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
  // In a quantized mode the CPU's weight comes from UploadWeight: a plain
  // Upload is an f32 tensor, which CpuBackend::MatMul multiplies in f32
  // whatever the backend's mode (so the comparison "in the same mode" was
  // against f32 until 2026-12-06).
  Tensor wc = cpu_mode == Quantization::kNone
                  ? *cpu->Upload(w, {c.m, c.k})
                  : *cpu->UploadWeight(w, {c.m, c.k}, WeightRole::kLinear);
  Tensor wg = *gpu->UploadWeight(w, {c.m, c.k}, WeightRole::kLinear);
  Tensor oc = *cpu->Allocate(ElementType::kF32, {c.n, c.m});
  Tensor og = *gpu->Allocate(ElementType::kF32, {c.n, c.m});
  cpu->MatMul(xc, wc, &oc);
  gpu->MatMul(xg, wg, &og);
  const double err = RelativeMaxError(ToHost(*gpu, og), ToHost(*cpu, oc));
  EXPECT_LT(err, c.tolerance) << c.dtype << " " << c.quantization
                              << " n=" << c.n << " m=" << c.m << " k=" << c.k;
}

TEST_P(CudaMatMulTest, MatchesCpu) {
  ExpectMatMulMatchesCpu(GetParam(), Quantization::kNone);
}

// int8 / LLM.int8(): against the CPU in the same mode, its reference (issue
// 17); they agree within the int8 error (the CPU also quantizes activations
// and picks outliers per row), not bit for bit.
TEST_P(CudaMatMulTest, MatchesCpuInTheSameMode) {
  const MatMulCase c = GetParam();
  absl::StatusOr<BackendOptions> parsed =
      ParseBackendOptions("cpu", "", c.quantization);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  if (parsed->quantization == Quantization::kNone) {
    GTEST_SKIP() << "not quantized";
  }
  ExpectMatMulMatchesCpu(c, parsed->quantization);
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
                    MatMulCase{"f16", "llm.int8", 2, 64, 30, 4e-2},
                    // The tiled int8 GEMV (k % 16 == 0) at 1..16 rows, odd m.
                    MatMulCase{"bf16", "int8", 1, 333, 2048, 3e-2},
                    MatMulCase{"f16", "int8", 3, 37, 208, 3e-2},
                    MatMulCase{"bf16", "int8", 8, 130, 512, 3e-2},
                    MatMulCase{"f16", "int8", 16, 257, 1024, 3e-2},
                    // 16 rows with k % 16 != 0: the warp-per-channel GEMV.
                    MatMulCase{"f16", "int8", 16, 100, 40, 3e-2}),
    // Index names: the parameters are structs with pointers, whose bytes
    // gtest would otherwise print into the name (unstable under ASLR).
    [](const auto& info) { return "case" + std::to_string(info.index); });

// Runs without a GPU: the GEMV's int8 -> f32 conversion (a byte placed in a
// float mantissa) is exact for every byte in every lane of a word.
TEST(Int8GemvTest, LaneToFloatIsExact) {
  for (int b = 0; b < 256; ++b) {
    const int8_t v = static_cast<int8_t>(b);
    for (int lane = 0; lane < 4; ++lane) {
      // The other lanes hold different bytes, which must not leak in.
      uint32_t word = 0xA55A3CC3u;
      word &= ~(0xffu << (8 * lane));
      word |= static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * lane);
      EXPECT_EQ(cuda::Int8LaneToFloat(word, lane), static_cast<float>(v))
          << b << " lane " << lane;
    }
  }
}

// Weight-only int8 GEMV at every batch size it serves (1..16 rows) against
// the exact product with the same quantized weights, computed on the host
// (per-row absmax / 127, rint, as the upload does): only the f32 summation
// order differs, so a dropped k range, a mixed-up channel or row, or a lost
// warp partial shows far above the 1e-5 tolerance.
TEST(Int8GemvTest, MatchesDequantizedReference) {
  CudaBackend::Options options = *ParseCudaOptions("bf16", "int8");
  STRATA_REQUIRE_CUDA(gpu, options);
  const int64_t m = 203, k = 1040;  // m odd; k % 16 == 0, not a power of two
  const std::vector<float> w = RandomVector(m * k, 70, 0.05f);
  Tensor wg = *gpu->UploadWeight(w, {m, k}, WeightRole::kLinear);
  std::vector<double> dequant(static_cast<size_t>(m * k));
  for (int64_t j = 0; j < m; ++j) {
    float amax = 0.0f;
    for (int64_t p = 0; p < k; ++p)
      amax = std::max(amax, std::abs(w[j * k + p]));
    const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int64_t p = 0; p < k; ++p) {
      const float q =
          std::min(127.0f, std::max(-127.0f, std::rint(w[j * k + p] * inv)));
      dequant[j * k + p] = static_cast<double>(q) * scale;
    }
  }
  for (int64_t n = 1; n <= 16; ++n) {
    const std::vector<float> x = RandomVector(n * k, 71 + n);
    Tensor xg = *gpu->Upload(x, {n, k});
    Tensor og = *gpu->Allocate(ElementType::kF32, {n, m});
    gpu->MatMul(xg, wg, &og);
    std::vector<float> want(static_cast<size_t>(n * m));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        double sum = 0.0;
        for (int64_t p = 0; p < k; ++p)
          sum += x[i * k + p] * dequant[j * k + p];
        want[i * m + j] = static_cast<float>(sum);
      }
    }
    EXPECT_LT(RelativeMaxError(ToHost(*gpu, og), want), 1e-5) << "n=" << n;
  }
}

// The LLM.int8() inlier GEMV (int8 x int8 -> int32) at 1..16 rows equals the
// host's integer product exactly: integer sums have no rounding, so any
// difference is a kernel bug. Extreme values (-128, 127) included.
TEST(Int8GemvTest, DotGemvIsExact) {
  STRATA_REQUIRE_CUDA(gpu);  // only to skip without a device
  const int64_t m = 77, k = 1040, max_n = 16;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> byte(-128, 127);
  std::vector<int8_t> w(m * k), x(max_n * k);
  for (int8_t& v : w) v = static_cast<int8_t>(byte(rng));
  for (int8_t& v : x) v = static_cast<int8_t>(byte(rng));
  w[0] = x[0] = -128;
  w[1] = x[1] = 127;
  int8_t *dw = nullptr, *dx = nullptr;
  int32_t* dacc = nullptr;
  ASSERT_EQ(cudaMalloc(&dw, w.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dx, x.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dacc, max_n * m * sizeof(int32_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.data(), x.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  for (int64_t n = 1; n <= max_n; ++n) {
    ASSERT_TRUE(cuda::Int8DotGemvSupports(dx, dw, n, k));
    ASSERT_EQ(cuda::LaunchInt8DotGemv(dx, dw, n, m, k, dacc, nullptr),
              cudaSuccess);
    std::vector<int32_t> got(n * m);
    ASSERT_EQ(cudaMemcpy(got.data(), dacc, got.size() * sizeof(int32_t),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        int32_t want = 0;
        for (int64_t p = 0; p < k; ++p) want += x[i * k + p] * w[j * k + p];
        ASSERT_EQ(got[i * m + j], want)
            << "n=" << n << " i=" << i << " j=" << j;
      }
    }
  }
  // Shapes it declines: k % 16 != 0, more than 16 rows.
  EXPECT_FALSE(cuda::Int8DotGemvSupports(dx, dw, 4, 1000));
  EXPECT_FALSE(cuda::Int8DotGemvSupports(dx, dw, 17, k));
  cudaFree(dw);
  cudaFree(dx);
  cudaFree(dacc);
}

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
  // GatherRows copies, so the GPU's gathered rows are its own RmsNorm rows
  // bit for bit. Across backends only the tolerance holds: the two RmsNorms
  // sum squares in different orders (CPU SIMD lanes vs the GPU's warp tree),
  // so a row's 1/rms can differ in the last bit; rows where it happens to
  // agree compare equal, the others do not (why an exact CPU-vs-GPU
  // comparison here failed on the H200 after its first row).
  const std::vector<float> normed = ToHost(*gpu, out.gpu);
  const std::vector<float> got = ToHost(*gpu, gathered.gpu);
  ASSERT_EQ(got.size(), rows.size() * static_cast<size_t>(h));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int64_t j = 0; j < h; ++j) {
      ASSERT_EQ(got[r * h + j], normed[rows[r] * h + j]) << r << " " << j;
    }
  }
  EXPECT_LT(RelativeMaxError(got, ToHost(*cpu, gathered.cpu)), 1e-5);
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
