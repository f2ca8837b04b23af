// ModelRunner end to end on the fixtures: greedy generation through Execute()
// reproduces the reference tokens, ComputeAllLogits reproduces the reference
// logits, and bad options or plans are errors, not crashes.
#include "engine/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/testing/model_runner_test_peer.h"

namespace strata {
namespace {

std::string FixtureDir(const std::string& name) {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/" + name;
}

struct Reference {
  std::vector<TokenId> prompt_ids;
  std::vector<std::vector<float>> prefill_logits;  // [prompt, vocab]
  std::vector<TokenId> generated_ids;
};

Reference LoadReference(const std::string& model_dir) {
  std::ifstream in(model_dir + "/reference.json");
  const nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << model_dir;
  Reference ref;
  if (json.is_discarded()) return ref;
  ref.prompt_ids = json["prompt_ids"].get<std::vector<TokenId>>();
  ref.generated_ids = json["generated_ids"].get<std::vector<TokenId>>();
  for (const auto& row : json["steps"][0]["logits"]) {
    ref.prefill_logits.push_back(row.get<std::vector<float>>());
  }
  return ref;
}

std::unique_ptr<ModelRunner> CreateRunner(const std::string& fixture,
                                          int32_t block_size = 16) {
  ModelRunner::Options options;
  options.model_dir = FixtureDir(fixture);
  options.kv_cache_bytes = 4 << 20;
  options.block_size = block_size;
  options.backend.num_threads = 2;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? *std::move(runner) : nullptr;
}

class ModelRunnerFixtureTest : public testing::TestWithParam<std::string> {};

// Prompt then 20 decode tokens, each sampled greedily inside Execute().
TEST_P(ModelRunnerFixtureTest, GreedyGenerationMatchesReference) {
  const Reference ref = LoadReference(FixtureDir(GetParam()));
  ASSERT_EQ(ref.generated_ids.size(), 21u);
  std::unique_ptr<ModelRunner> runner = CreateRunner(GetParam(), 8);
  ASSERT_NE(runner, nullptr);

  // A shuffled block table covering the prompt and every decode step.
  std::vector<int32_t> table(runner->num_blocks());
  std::iota(table.begin(), table.end(), 0);
  std::mt19937 rng(11);
  std::shuffle(table.begin(), table.end(), rng);
  table.resize(8);

  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.num_top_logprobs = 3;
  std::vector<TokenId> output;
  std::vector<TokenId> next = ref.prompt_ids;
  int32_t position = 0;
  for (size_t step = 0; step < ref.generated_ids.size(); ++step) {
    StepPlan plan;
    WorkItem& item = plan.items.emplace_back();
    item.request_id = 77;
    item.tokens = next;
    item.start_position = position;
    item.block_table = table;
    item.sample = true;
    item.sampling = &greedy;
    item.prompt_tokens = ref.prompt_ids;
    item.output_tokens = output;
    absl::StatusOr<StepResult> result = runner->Execute(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->items.size(), 1u);
    EXPECT_EQ(result->items[0].request_id, 77u);
    ASSERT_TRUE(result->items[0].sampled.has_value());
    const SampledToken& sampled = *result->items[0].sampled;
    EXPECT_EQ(sampled.token, ref.generated_ids[step]) << "step " << step;
    EXPECT_LE(sampled.logprob, 0.0f);
    ASSERT_EQ(sampled.top_logprobs.size(), 3u);
    EXPECT_EQ(sampled.top_logprobs[0].first, sampled.token);
    position += static_cast<int32_t>(next.size());
    output.push_back(sampled.token);
    next = {sampled.token};
  }
}

TEST_P(ModelRunnerFixtureTest, PrefillLogitsMatchReference) {
  const Reference ref = LoadReference(FixtureDir(GetParam()));
  std::unique_ptr<ModelRunner> runner = CreateRunner(GetParam());
  ASSERT_NE(runner, nullptr);
  const std::vector<int32_t> table = {5, 2};
  StepPlan plan;
  WorkItem& item = plan.items.emplace_back();
  item.tokens = ref.prompt_ids;
  item.block_table = table;
  absl::StatusOr<std::vector<std::vector<float>>> logits =
      ModelRunnerTestPeer(*runner).ComputeAllLogits(plan);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), ref.prefill_logits.size());
  for (size_t r = 0; r < logits->size(); ++r) {
    ASSERT_EQ((*logits)[r].size(), ref.prefill_logits[r].size());
    for (size_t v = 0; v < (*logits)[r].size(); ++v) {
      ASSERT_NEAR((*logits)[r][v], ref.prefill_logits[r][v], 1e-4f)
          << "row " << r << " token " << v;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelRunnerFixtureTest,
                         testing::Values("tiny-llama", "tiny-qwen2"),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(ModelRunnerTest, SizesTheBlockPoolFromTheBudget) {
  std::unique_ptr<ModelRunner> runner = CreateRunner("tiny-llama", 16);
  ASSERT_NE(runner, nullptr);
  EXPECT_EQ(runner->block_size(), 16);
  // K and V, 2 layers, 16 tokens, 2 kv heads of 16 floats: 8 KiB per block.
  EXPECT_EQ(runner->num_blocks(), (4 << 20) / (2 * 2 * 16 * 2 * 16 * 4));
  EXPECT_EQ(runner->config().vocab_size, 1808);
  EXPECT_EQ(runner->config().architecture, "LlamaForCausalLM");
}

TEST(ModelRunnerTest, RejectsBadOptions) {
  ModelRunner::Options options;
  options.model_dir = FixtureDir("tiny-llama");
  options.backend.name = "tpu";
  EXPECT_EQ(ModelRunner::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.backend.name = "cuda";
  EXPECT_EQ(ModelRunner::Create(options).status().code(),
            absl::StatusCode::kFailedPrecondition);
  options.backend.name = "cpu";
  options.kv_cache_bytes = 100;
  absl::Status status = ModelRunner::Create(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("kv_cache_bytes"));
  options.kv_cache_bytes = 1 << 20;
  options.block_size = 0;
  EXPECT_EQ(ModelRunner::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.block_size = 16;
  options.model_dir = FixtureDir("no-such-model");
  status = ModelRunner::Create(options).status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), testing::HasSubstr("config.json"));
}

// --quantization=int8 and llm.int8 change the CPU's logits (they are
// honoured; issue 17: int8 used to be accepted and ignored) and stay close
// to the f32 reference.
TEST(ModelRunnerTest, CpuHonoursInt8Modes) {
  const Reference ref = LoadReference(FixtureDir("tiny-llama"));
  float max_abs = 0.0f;
  for (const auto& row : ref.prefill_logits) {
    for (float v : row) max_abs = std::max(max_abs, std::fabs(v));
  }
  // Mean absolute logit error per mode: per-group scales must be honoured
  // too (closer to the reference than per channel on this fixture).
  std::map<std::pair<Quantization, int32_t>, double> mean_err;
  for (const auto& [mode, group_size] :
       std::vector<std::pair<Quantization, int32_t>>{
           {Quantization::kWeightInt8, 0},
           {Quantization::kLlmInt8, 0},
           {Quantization::kWeightInt8, 32}}) {
    SCOPED_TRACE(testing::Message()
                 << QuantizationName(mode) << " groups of " << group_size);
    ModelRunner::Options options;
    options.model_dir = FixtureDir("tiny-llama");
    options.kv_cache_bytes = 4 << 20;
    options.backend.num_threads = 2;
    options.backend.quantization = mode;
    options.backend.int8_group_size = group_size;
    absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
        ModelRunner::Create(options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    const std::vector<int32_t> table = {5, 2};
    StepPlan plan;
    WorkItem& item = plan.items.emplace_back();
    item.tokens = ref.prompt_ids;
    item.block_table = table;
    absl::StatusOr<std::vector<std::vector<float>>> logits =
        ModelRunnerTestPeer(**runner).ComputeAllLogits(plan);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), ref.prefill_logits.size());
    float max_err = 0.0f;
    double sum_err = 0.0;
    int64_t count = 0, same_argmax = 0;
    for (size_t r = 0; r < logits->size(); ++r) {
      const std::vector<float>& got = (*logits)[r];
      const std::vector<float>& want = ref.prefill_logits[r];
      for (size_t v = 0; v < got.size(); ++v) {
        const float err = std::fabs(got[v] - want[v]);
        max_err = std::max(max_err, err);
        sum_err += err;
        ++count;
      }
      same_argmax += std::max_element(got.begin(), got.end()) - got.begin() ==
                     std::max_element(want.begin(), want.end()) - want.begin();
    }
    EXPECT_GT(max_err, 1e-4f) << "logits as without quantization";
    // Measured (AVX-512 VNNI): int8 max 1.13, mean 0.116, argmax 18/20;
    // llm.int8 max 0.78, mean 0.105, argmax 17/20 -- this random 2-layer
    // fixture amplifies noise; the trained model's perplexity moves by 0.1%
    // (docs/engine.md).
    EXPECT_LT(max_err, 0.1f * max_abs);
    EXPECT_LT(sum_err / static_cast<double>(count), 0.02 * max_abs);
    EXPECT_GE(same_argmax * 4, static_cast<int64_t>(logits->size()) * 3);
    mean_err[{mode, group_size}] = sum_err / static_cast<double>(count);
  }
  EXPECT_LT((mean_err[{Quantization::kWeightInt8, 32}]),
            (mean_err[{Quantization::kWeightInt8, 0}]));
}

TEST(ModelRunnerTest, BadPlanIsAnErrorAndTheRunnerStaysUsable) {
  std::unique_ptr<ModelRunner> runner = CreateRunner("tiny-llama");
  ASSERT_NE(runner, nullptr);
  const std::vector<TokenId> tokens = {1792, 79, 110};
  const std::vector<int32_t> bad_table = {runner->num_blocks()};
  SamplingParams greedy;
  greedy.temperature = 0.0f;

  StepPlan plan;
  WorkItem& item = plan.items.emplace_back();
  item.tokens = tokens;
  item.block_table = bad_table;
  item.sample = true;
  item.sampling = &greedy;
  absl::StatusOr<StepResult> result = runner->Execute(plan);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), testing::HasSubstr("block id"));

  // Sampling asked for without parameters.
  const std::vector<int32_t> table = {0};
  item.block_table = table;
  item.sampling = nullptr;
  EXPECT_EQ(runner->Execute(plan).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A good plan with a second, non-sampling item still runs.
  item.sampling = &greedy;
  WorkItem& other = plan.items.emplace_back();
  const std::vector<TokenId> other_tokens = {5, 6};
  const std::vector<int32_t> other_table = {1};
  other.request_id = 2;
  other.tokens = other_tokens;
  other.block_table = other_table;
  result = runner->Execute(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->items.size(), 2u);
  EXPECT_TRUE(result->items[0].sampled.has_value());
  EXPECT_FALSE(result->items[1].sampled.has_value());
  EXPECT_EQ(result->items[1].request_id, 2u);

  // An empty plan is an empty result.
  result = runner->Execute(StepPlan{});
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result->items.empty());
}

}  // namespace
}  // namespace strata
