// End to end on models/strata-tiny: the CUDA runner's logits against the CPU
// runner's (f32) for a prefill and 32 decode steps, for each weight format,
// feeding both the CPU's greedy tokens so the sequences stay identical.
// Tolerance: max |gpu - cpu| over a step's logits divided by max |cpu logit|
// (f16 3e-2, bf16 6e-2, int8 modes 1.5e-1), and greedy agreement.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "engine/model_runner.h"
#include "engine/step.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace strata {
namespace {

std::string ModelDir() {
  return std::string(STRATA_SOURCE_DIR) + "/models/strata-tiny";
}

std::unique_ptr<ModelRunner> Runner(const std::string& backend,
                                    const std::string& dtype,
                                    const std::string& quantization) {
  ModelRunner::Options options;
  options.model_dir = ModelDir();
  options.backend = backend;
  options.dtype = dtype;
  options.quantization = quantization;
  options.kv_cache_bytes = 8 << 20;
  options.block_size = 16;
  options.num_threads = 2;
  absl::StatusOr<std::unique_ptr<ModelRunner>> r = ModelRunner::Create(options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

int32_t ArgMax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

struct Case {
  const char* dtype;
  const char* quantization;
  double tolerance;
  int min_greedy_agreement;  // of 33 steps
};

class CudaModelTest : public testing::TestWithParam<Case> {};

TEST_P(CudaModelTest, LogitsMatchCpuOverPrefillAndDecode) {
  const Case c = GetParam();
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  std::unique_ptr<ModelRunner> cpu = Runner("cpu", "bf16", "none");
  std::unique_ptr<ModelRunner> gpu = Runner("cuda", c.dtype, c.quantization);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const int32_t vocab = cpu->config().vocab_size;

  std::vector<TokenId> tokens = {1792, 5,  17, 300, 301, 302, 1000, 7,  9, 11,
                                 42,   43, 44, 45,  46,  47,  48,   49, 50};
  std::vector<int32_t> table(5);
  std::iota(table.begin(), table.end(), 3);
  int32_t position = 0;
  std::vector<TokenId> step_tokens = tokens;
  int agree = 0;
  for (int step = 0; step <= 32; ++step) {
    StepPlan plan;
    WorkItem item;
    item.request_id = 1;
    item.tokens = step_tokens;
    item.start_position = position;
    item.block_table = table;
    plan.items.push_back(item);
    absl::StatusOr<std::vector<std::vector<float>>> want =
        cpu->ComputeAllLogits(plan);
    absl::StatusOr<std::vector<std::vector<float>>> got =
        gpu->ComputeAllLogits(plan);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want->size());
    for (size_t i = 0; i < want->size(); ++i) {
      ASSERT_EQ((*got)[i].size(), static_cast<size_t>(vocab));
      EXPECT_LT(testing_cuda::RelativeMaxError((*got)[i], (*want)[i]),
                c.tolerance)
          << "step " << step << " row " << i;
    }
    const TokenId next = ArgMax(want->back());
    agree += ArgMax(got->back()) == next;
    position += static_cast<int32_t>(step_tokens.size());
    step_tokens = {next};
  }
  EXPECT_GE(agree, c.min_greedy_agreement);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CudaModelTest,
    testing::Values(Case{"f16", "none", 3e-2, 31},
                    Case{"bf16", "none", 6e-2, 28},
                    Case{"bf16", "int8", 1.5e-1, 24},
                    Case{"f16", "llm.int8", 1.5e-1, 24}),
    // Index names: the parameters are structs with pointers, whose bytes
    // gtest would otherwise print into the name (unstable under ASLR).
    [](const auto& info) { return "case" + std::to_string(info.index); });

// Execute() samples on the device: greedy tokens equal the CPU's.
TEST(CudaModelExecuteTest, DeviceGreedySamplingMatchesCpu) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  std::unique_ptr<ModelRunner> cpu = Runner("cpu", "bf16", "none");
  std::unique_ptr<ModelRunner> gpu = Runner("cuda", "f16", "none");
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<TokenId> prompt = {1792, 10, 20, 30, 40, 50, 60};
  std::vector<int32_t> table = {0, 1, 2};
  std::vector<TokenId> out_cpu, out_gpu;
  const std::pair<ModelRunner*, std::vector<TokenId>*> runs[] = {
      {cpu.get(), &out_cpu}, {gpu.get(), &out_gpu}};
  for (const auto& [runner, out] : runs) {
    std::vector<TokenId> next = prompt;
    int32_t position = 0;
    for (int step = 0; step < 16; ++step) {
      StepPlan plan;
      WorkItem item;
      item.request_id = 1;
      item.tokens = next;
      item.start_position = position;
      item.block_table = table;
      item.sample = true;
      item.sampling = &greedy;
      item.prompt_tokens = prompt;
      item.output_tokens = *out;
      plan.items.push_back(item);
      absl::StatusOr<StepResult> r = runner->Execute(plan);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->items[0].sampled.has_value());
      position += static_cast<int32_t>(next.size());
      out->push_back(r->items[0].sampled->token);
      next = {out->back()};
    }
  }
  // f16 rounding may flip a near-tie late in the sequence; the first tokens
  // must agree.
  ASSERT_EQ(out_cpu.size(), out_gpu.size());
  EXPECT_EQ(std::vector<TokenId>(out_gpu.begin(), out_gpu.begin() + 8),
            std::vector<TokenId>(out_cpu.begin(), out_cpu.begin() + 8));
}

}  // namespace
}  // namespace strata
