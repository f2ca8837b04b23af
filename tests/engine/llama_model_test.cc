// LlamaModel against the float64 PyTorch reference of each fixture
// (tests/data/*/reference.json), with every CPU kernel variant this machine
// runs; plus chunked prefill, batch invariance and plan validation.
#include "engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/loader/checkpoint.h"
#include "engine/loader/model_config.h"
#include "engine/loader/model_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/bf16_matmul.h"
#include "kernels/cpu/isa.h"
#include "nlohmann/json.hpp"
#include "tests/engine/testing/model_runner_test_peer.h"

namespace strata {
namespace {

constexpr float kReferenceTolerance = 1e-4f;

std::string FixtureDir(const std::string& name) {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/" + name;
}

struct ReferenceStep {
  std::vector<TokenId> input_ids;
  int32_t start_position = 0;
  std::vector<std::vector<float>> logits;  // [input_ids.size(), vocab]
};

struct Reference {
  std::vector<TokenId> prompt_ids;
  std::vector<ReferenceStep> steps;
  std::vector<TokenId> generated_ids;
};

Reference LoadReference(const std::string& model_dir) {
  std::ifstream in(model_dir + "/reference.json");
  EXPECT_TRUE(in.good()) << model_dir;
  const nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << model_dir;
  Reference ref;
  if (json.is_discarded()) return ref;
  ref.prompt_ids = json["prompt_ids"].get<std::vector<TokenId>>();
  ref.generated_ids = json["generated_ids"].get<std::vector<TokenId>>();
  for (const auto& step : json["steps"]) {
    ReferenceStep s;
    s.input_ids = step["input_ids"].get<std::vector<TokenId>>();
    s.start_position = step["start_position"].get<int32_t>();
    for (const auto& row : step["logits"]) {
      s.logits.push_back(row.get<std::vector<float>>());
    }
    ref.steps.push_back(std::move(s));
  }
  return ref;
}

// A model with its own backend.
struct Loaded {
  ModelConfig config;
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<LlamaModel> model;
};

Loaded Load(const std::string& model_dir, cpu::Isa isa, int32_t num_threads,
            int32_t block_size, int32_t num_blocks,
            CpuBackend::Options backend_options = {},
            bool fuse_projections = true) {
  Loaded loaded;
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(model_dir + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  loaded.config = *config;
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(model_dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(**checkpoint, *config);
  EXPECT_TRUE(weights.ok()) << weights.status();
  backend_options.num_threads = num_threads;
  backend_options.isa = isa;
  absl::StatusOr<std::unique_ptr<CpuBackend>> backend =
      CpuBackend::Create(backend_options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  loaded.backend = *std::move(backend);
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Create(*config, *std::move(weights), loaded.backend.get(),
                         {.block_size = block_size,
                          .num_blocks = num_blocks,
                          .fuse_projections = fuse_projections});
  EXPECT_TRUE(model.ok()) << model.status();
  loaded.model = *std::move(model);
  return loaded;
}

// A shuffled list of distinct physical blocks.
std::vector<int32_t> ShuffledBlocks(int32_t num_blocks, int32_t count,
                                    uint32_t seed) {
  std::vector<int32_t> blocks(num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  blocks.resize(count);
  return blocks;
}

std::vector<int32_t> AllRows(size_t n) {
  std::vector<int32_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  return rows;
}

WorkItem Item(std::span<const TokenId> tokens, int32_t start,
              std::span<const int32_t> block_table) {
  WorkItem item;
  item.tokens = tokens;
  item.start_position = start;
  item.block_table = block_table;
  return item;
}

int32_t Argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) -
                              row.begin());
}

struct ReferenceCase {
  std::string fixture;
  cpu::Isa isa;
};

class LlamaModelReferenceTest : public testing::TestWithParam<ReferenceCase> {};

// Prefill of the whole prompt (logits at every position), then the 20 greedy
// decode steps, exactly as the reference ran them.
TEST_P(LlamaModelReferenceTest, MatchesReferenceLogits) {
  const std::string dir = FixtureDir(GetParam().fixture);
  const Reference ref = LoadReference(dir);
  ASSERT_FALSE(ref.steps.empty());
  constexpr int32_t kBlockSize = 4;
  constexpr int32_t kNumBlocks = 40;
  Loaded m = Load(dir, GetParam().isa, 2, kBlockSize, kNumBlocks);
  ASSERT_NE(m.model, nullptr);
  const int32_t vocab = m.config.vocab_size;
  const std::vector<int32_t> table = ShuffledBlocks(kNumBlocks, 16, 7);

  float max_diff = 0;
  for (size_t s = 0; s < ref.steps.size(); ++s) {
    const ReferenceStep& step = ref.steps[s];
    const WorkItem item = Item(step.input_ids, step.start_position, table);
    absl::StatusOr<std::vector<float>> logits =
        LlamaModelTestPeer(*m.model).Forward(
            std::span<const WorkItem>(&item, 1),
            AllRows(step.input_ids.size()));
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), step.logits.size() * vocab);
    for (size_t r = 0; r < step.logits.size(); ++r) {
      ASSERT_EQ(step.logits[r].size(), static_cast<size_t>(vocab));
      for (int32_t v = 0; v < vocab; ++v) {
        const float diff =
            std::fabs((*logits)[r * vocab + v] - step.logits[r][v]);
        max_diff = std::max(max_diff, diff);
        ASSERT_LE(diff, kReferenceTolerance)
            << "step " << s << " row " << r << " token " << v;
      }
    }
    const std::span<const float> last(
        logits->data() + (step.logits.size() - 1) * vocab, vocab);
    EXPECT_EQ(Argmax(last), ref.generated_ids[s]) << "step " << s;
  }
  RecordProperty("max_abs_diff", std::to_string(max_diff));
}

std::vector<ReferenceCase> ReferenceCases() {
  std::vector<ReferenceCase> cases;
  for (const char* fixture : {"tiny-llama", "tiny-qwen2"}) {
    for (cpu::Isa isa : cpu::SupportedIsas()) cases.push_back({fixture, isa});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LlamaModelReferenceTest,
                         testing::ValuesIn(ReferenceCases()),
                         [](const testing::TestParamInfo<ReferenceCase>& info) {
                           std::string name =
                               info.param.fixture + "_" +
                               std::string(cpu::IsaName(info.param.isa));
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

CpuBackend::Options Bf16Compute() {
  CpuBackend::Options options;
  options.compute = CpuBackend::Compute::kBf16;
  return options;
}

class LlamaModelTest : public testing::Test {
 protected:
  static constexpr int32_t kBlockSize = 4;
  static constexpr int32_t kNumBlocks = 64;

  void SetUp() override {
    dir_ = FixtureDir("tiny-llama");
    ref_ = LoadReference(dir_);
    ASSERT_FALSE(ref_.prompt_ids.empty());
  }

  // The checks of BatchInvariantThroughTheModel on the model in `dir`.
  void CheckBatchInvariance(const std::string& dir,
                            const CpuBackend::Options& options);

  std::string dir_;
  Reference ref_;
};

// The prompt run in chunks of 5 across steps sees the same keys as a whole
// prefill, so every position's logits agree.
TEST_F(LlamaModelTest, ChunkedPrefillMatchesWholePrefill) {
  Loaded m = Load(dir_, cpu::DefaultIsa(), 2, kBlockSize, kNumBlocks);
  const int32_t vocab = m.config.vocab_size;
  const std::vector<TokenId>& prompt = ref_.prompt_ids;
  const std::vector<int32_t> whole_table = ShuffledBlocks(kNumBlocks, 8, 1);
  const WorkItem whole = Item(prompt, 0, whole_table);
  absl::StatusOr<std::vector<float>> expected =
      LlamaModelTestPeer(*m.model).Forward(std::span<const WorkItem>(&whole, 1),
                                           AllRows(prompt.size()));
  ASSERT_TRUE(expected.ok()) << expected.status();

  // Other blocks for the chunked run, so nothing is reused from the first.
  std::vector<int32_t> chunk_table;
  for (int32_t b = 0; b < kNumBlocks && chunk_table.size() < 8; ++b) {
    if (std::find(whole_table.begin(), whole_table.end(), b) ==
        whole_table.end()) {
      chunk_table.push_back(b);
    }
  }
  std::reverse(chunk_table.begin(), chunk_table.end());
  constexpr size_t kChunk = 5;
  for (size_t begin = 0; begin < prompt.size(); begin += kChunk) {
    const size_t count = std::min(kChunk, prompt.size() - begin);
    const std::span<const TokenId> chunk(prompt.data() + begin, count);
    const WorkItem item = Item(chunk, static_cast<int32_t>(begin), chunk_table);
    absl::StatusOr<std::vector<float>> logits =
        LlamaModelTestPeer(*m.model).Forward(
            std::span<const WorkItem>(&item, 1), AllRows(count));
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (size_t r = 0; r < count; ++r) {
      for (int32_t v = 0; v < vocab; ++v) {
        ASSERT_NEAR((*logits)[r * vocab + v],
                    (*expected)[(begin + r) * vocab + v], 1e-5f)
            << "position " << begin + r << " token " << v;
      }
    }
  }
}

// Two different sequences in one batch (one prefilling, one decoding) get
// bit-identical logits to each run alone, and so does a different thread
// count; in every weight mode of the CPU backend (f32 compute, int8,
// LLM.int8() with outliers forced by a low threshold, bf16 compute where
// the CPU has it), and so do q/k/v and gate/up multiplied apart instead of
// as one fused weight each.
TEST_F(LlamaModelTest, BatchInvariantThroughTheModel) {
  std::vector<CpuBackend::Options> modes(5);
  modes[1].quantization = Quantization::kWeightInt8;
  modes[2].quantization = Quantization::kLlmInt8;
  modes[2].llm_int8_threshold = 1.0f;  // so that most rows have outliers
  modes[3] = modes[1];
  modes[3].int8_group_size = 32;  // per-group scales
  modes[4] = modes[2];
  modes[4].int8_group_size = 32;
  for (size_t mode = 0; mode < modes.size(); ++mode) {
    SCOPED_TRACE(testing::Message() << "mode " << mode);
    CheckBatchInvariance(dir_, modes[mode]);
  }
  // bf16 compute applies to bfloat16 weights: the bundled bf16 model.
  if (cpu::Bf16DotSupported()) {
    SCOPED_TRACE("bf16 compute");
    CheckBatchInvariance(std::string(STRATA_SOURCE_DIR) + "/models/strata-tiny",
                         Bf16Compute());
  }
}

void LlamaModelTest::CheckBatchInvariance(const std::string& dir,
                                          const CpuBackend::Options& options) {
  const std::vector<TokenId> prompt_a = ref_.prompt_ids;
  std::vector<TokenId> prompt_b;
  for (int i = 0; i < 13; ++i) prompt_b.push_back((i * 97 + 5) % 1792);
  const std::vector<TokenId> next_b = {42};
  const std::vector<int32_t> table_a = ShuffledBlocks(kNumBlocks, 6, 3);
  std::vector<int32_t> table_b;
  for (int32_t b = kNumBlocks - 1; table_b.size() < 5; --b) {
    if (std::find(table_a.begin(), table_a.end(), b) == table_a.end()) {
      table_b.push_back(b);
    }
  }
  const int32_t n_a = static_cast<int32_t>(prompt_a.size());

  // Alone: A's prefill; B's prefill then B's decode token.
  auto run_alone = [&](LlamaModel& model, std::vector<float>* a,
                       std::vector<float>* b_decode) {
    const WorkItem item_a = Item(prompt_a, 0, table_a);
    absl::StatusOr<std::vector<float>> la = LlamaModelTestPeer(model).Forward(
        std::span<const WorkItem>(&item_a, 1), AllRows(prompt_a.size()));
    ASSERT_TRUE(la.ok()) << la.status();
    *a = *la;
    const WorkItem item_b = Item(prompt_b, 0, table_b);
    ASSERT_TRUE(LlamaModelTestPeer(model)
                    .Forward(std::span<const WorkItem>(&item_b, 1), {})
                    .ok());
    const WorkItem decode_b =
        Item(next_b, static_cast<int32_t>(prompt_b.size()), table_b);
    absl::StatusOr<std::vector<float>> lb = LlamaModelTestPeer(model).Forward(
        std::span<const WorkItem>(&decode_b, 1), AllRows(1));
    ASSERT_TRUE(lb.ok()) << lb.status();
    *b_decode = *lb;
  };

  Loaded m = Load(dir, cpu::DefaultIsa(), 2, kBlockSize, kNumBlocks, options);
  std::vector<float> alone_a, alone_b;
  run_alone(*m.model, &alone_a, &alone_b);

  // Together: B's prompt is cached already; A's prefill and B's decode token
  // share one batch (B first, so A's rows move).
  const WorkItem batch[] = {
      Item(next_b, static_cast<int32_t>(prompt_b.size()), table_b),
      Item(prompt_a, 0, table_a)};
  absl::StatusOr<std::vector<float>> together =
      LlamaModelTestPeer(*m.model).Forward(batch, AllRows(1 + prompt_a.size()));
  ASSERT_TRUE(together.ok()) << together.status();
  const size_t vocab = m.config.vocab_size;
  ASSERT_EQ(together->size(), (1 + n_a) * vocab);
  EXPECT_EQ(
      0, std::memcmp(together->data(), alone_b.data(), vocab * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(together->data() + vocab, alone_a.data(),
                           alone_a.size() * sizeof(float)));

  // One kernel thread instead of two: identical bits.
  Loaded single =
      Load(dir, cpu::DefaultIsa(), 1, kBlockSize, kNumBlocks, options);
  std::vector<float> single_a, single_b;
  run_alone(*single.model, &single_a, &single_b);
  EXPECT_EQ(single_a, alone_a);
  EXPECT_EQ(single_b, alone_b);

  // q/k/v and gate/up as separate products instead of one each (the
  // backend's fused weights): identical bits.
  ASSERT_GT(m.backend->WeightRowAlignment(), 0);
  Loaded unfused = Load(dir, cpu::DefaultIsa(), 2, kBlockSize, kNumBlocks,
                        options, /*fuse_projections=*/false);
  EXPECT_TRUE(LlamaModelTestPeer(*m.model).FusedProjections());
  EXPECT_FALSE(LlamaModelTestPeer(*unfused.model).FusedProjections());
  std::vector<float> unfused_a, unfused_b;
  run_alone(*unfused.model, &unfused_a, &unfused_b);
  EXPECT_EQ(unfused_a, alone_a);
  EXPECT_EQ(unfused_b, alone_b);
}

TEST_F(LlamaModelTest, RejectsBadPlans) {
  Loaded m = Load(dir_, cpu::DefaultIsa(), 1, kBlockSize, kNumBlocks);
  const std::vector<TokenId> tokens = {1, 2, 3, 4, 5};
  const std::vector<int32_t> good_table = {3, 9};
  auto forward = [&](const WorkItem& item) {
    return LlamaModelTestPeer(*m.model)
        .Forward(std::span<const WorkItem>(&item, 1), AllRows(1))
        .status();
  };
  const std::vector<int32_t> out_of_range = {3, kNumBlocks};
  absl::Status status = forward(Item(tokens, 0, out_of_range));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("block id 64"));

  const std::vector<int32_t> negative = {-1, 3};
  EXPECT_EQ(forward(Item(tokens, 0, negative)).code(),
            absl::StatusCode::kInvalidArgument);

  const std::vector<int32_t> short_table = {3};
  status = forward(Item(tokens, 0, short_table));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("block table"));

  const std::vector<TokenId> bad_token = {1, m.config.vocab_size};
  status = forward(Item(bad_token, 0, good_table));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("vocabulary"));

  const std::vector<TokenId> one = {7};
  std::vector<int32_t> long_table(
      m.config.max_position_embeddings / kBlockSize + 1, 0);
  status = forward(Item(one, m.config.max_position_embeddings, long_table));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("max_position_embeddings"));

  EXPECT_EQ(forward(Item({}, 0, good_table)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(forward(Item(tokens, -1, good_table)).code(),
            absl::StatusCode::kInvalidArgument);

  // Still usable, and the last position of the context is allowed.
  EXPECT_TRUE(forward(Item(tokens, 0, good_table)).ok());
  EXPECT_TRUE(
      forward(Item(one, m.config.max_position_embeddings - 1, long_table))
          .ok());
}

// Llama 3 rope_scaling on tiny-llama (factor 8, original context 64, head_dim
// 16): the first frequency is kept, the last six are divided by 8, one is
// interpolated.
TEST(LlamaRopeTest, Llama3ScalingBranches) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(FixtureDir("tiny-llama") + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::vector<float>> inv_freq =
      LlamaModel::RopeInverseFrequencies(*config);
  ASSERT_TRUE(inv_freq.ok()) << inv_freq.status();
  ASSERT_EQ(inv_freq->size(), 8u);
  auto base = [&](int i) { return std::pow(500000.0, -2.0 * i / 16); };
  EXPECT_FLOAT_EQ((*inv_freq)[0], 1.0f);
  for (int i = 2; i < 8; ++i) {
    EXPECT_FLOAT_EQ((*inv_freq)[i], static_cast<float>(base(i) / 8)) << i;
  }
  // i = 1: wavelength 2*pi/base(1) is between 16 and 64.
  const double wavelen = 2 * M_PI / base(1);
  const double smooth = (64 / wavelen - 1) / 3;
  EXPECT_FLOAT_EQ(
      (*inv_freq)[1],
      static_cast<float>((1 - smooth) * base(1) / 8 + smooth * base(1)));

  ModelConfig plain = *config;
  plain.rope_scaling.reset();
  inv_freq = LlamaModel::RopeInverseFrequencies(plain);
  ASSERT_TRUE(inv_freq.ok());
  for (int i = 0; i < 8; ++i) {
    EXPECT_FLOAT_EQ((*inv_freq)[i], static_cast<float>(base(i)));
  }
}

}  // namespace
}  // namespace strata
