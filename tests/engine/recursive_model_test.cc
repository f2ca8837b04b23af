// Recursive models (docs/recursive-models.md) through the ModelRunner, on the
// tests/data/tiny-recursive fixture (K=2 layers x N=3 loops, LoRA rank 4)
// against the float64 reference of tools/recursive/model.py: full depth
// sequence-wise and depth-wise, forced exits with both KV policies (logits,
// tokens, filled K/V), the threshold run, items at different loops in one
// batch, config/weight refusals and plan validation; the hidden-state exit
// measures (saturation, classifier) against the reference's runs.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/model_runner.h"
#include "engine/step.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/testing/model_runner_test_peer.h"

namespace strata {
namespace {

using ::testing::HasSubstr;

// Logits: |ours - reference| <= kAbs + kRel * |reference| (f32 against
// float64 through 6 effective layers with LoRA; the fixture rounds to 8
// significant digits).
constexpr float kAbs = 1e-4f;
constexpr float kRel = 5e-4f;
// Exit confidences (f32 logits against float64 ones).
constexpr float kConfidenceTolerance = 1e-4f;

constexpr int32_t kBlockSize = 4;
constexpr int32_t kNumBlocks = 64;
constexpr int32_t kNumLoops = 3;

std::string FixtureDir() {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-recursive";
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << path;
  return json;
}

std::vector<std::vector<float>> Rows(const nlohmann::json& rows) {
  std::vector<std::vector<float>> out;
  for (const auto& row : rows) out.push_back(row.get<std::vector<float>>());
  return out;
}

// Running max of |ours - reference| and of the relative excess, for the
// figures the tests record.
struct DiffStats {
  float max_abs = 0.0f;
  void Check(std::span<const float> ours, std::span<const float> ref,
             const std::string& what) {
    ASSERT_EQ(ours.size(), ref.size()) << what;
    for (size_t i = 0; i < ours.size(); ++i) {
      const float diff = std::fabs(ours[i] - ref[i]);
      max_abs = std::max(max_abs, diff);
      ASSERT_LE(diff, kAbs + kRel * std::fabs(ref[i]))
          << what << " index " << i << ": " << ours[i] << " vs " << ref[i];
    }
  }
};

int32_t Argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) -
                              row.begin());
}

std::vector<int32_t> ShuffledBlocks(int32_t count, uint32_t seed) {
  std::vector<int32_t> blocks(kNumBlocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  blocks.resize(count);
  return blocks;
}

std::unique_ptr<ModelRunner> MakeRunner(const std::string& kv_fill,
                                        int32_t num_threads = 2,
                                        const std::string& model_dir = "",
                                        bool fuse_projections = true) {
  ModelRunner::Options options;
  options.fuse_projections = fuse_projections;
  options.model_dir = model_dir.empty() ? FixtureDir() : model_dir;
  options.block_size = kBlockSize;
  // 2 (K, V) * 6 kv layers * 4 tokens * 2 kv heads * 16 * 4 bytes = 6144.
  options.kv_cache_bytes = 6144LL * kNumBlocks;
  options.backend.num_threads = num_threads;
  options.kv_fill = *ParseKvFillPolicy(kv_fill);
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return nullptr;
  EXPECT_EQ((*runner)->num_blocks(), kNumBlocks);
  return *std::move(runner);
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// One request's item for a step.
WorkItem Item(RequestId id, std::span<const TokenId> tokens, int32_t start,
              std::span<const int32_t> table, int32_t loop_begin = 0,
              int32_t loop_end = -1) {
  WorkItem item;
  item.request_id = id;
  item.tokens = tokens;
  item.start_position = start;
  item.block_table = table;
  item.loop_begin = loop_begin;
  item.loop_end = loop_end;
  return item;
}

// An item that samples its next token, with an exit rule when exit is set.
WorkItem SampleItem(RequestId id, std::span<const TokenId> tokens,
                    int32_t start, std::span<const int32_t> table,
                    const SamplingParams* sampling,
                    const ExitParams* exit = nullptr) {
  WorkItem item = Item(id, tokens, start, table);
  item.sample = true;
  item.sampling = sampling;
  item.exit = exit;
  return item;
}

TEST(RecursiveConfigTest, ParsesFixtureAndCountsKvLayers) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(FixtureDir() + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "StrataRecursiveLlamaForCausalLM");
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->num_loops, 3);
  EXPECT_EQ(config->lora_rank, 4);
  EXPECT_FLOAT_EQ(config->lora_alpha, 8.0f);
  EXPECT_FLOAT_EQ(config->lora_scale(), 2.0f);
  EXPECT_EQ(config->num_kv_layers(), 6);
  EXPECT_THAT(config->DebugString(), HasSubstr("num_loops=3"));

  // A plain Llama is N = 1, r = 0.
  absl::StatusOr<ModelConfig> plain = ModelConfig::FromFile(
      std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-llama/config.json");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->num_loops, 1);
  EXPECT_EQ(plain->lora_rank, 0);
  EXPECT_EQ(plain->num_kv_layers(), plain->num_hidden_layers);
}

TEST(RecursiveConfigTest, RefusesBadRecursionKeys) {
  nlohmann::json base = ReadJson(FixtureDir() + "/config.json");
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* message;
  };
  const Case cases[] = {
      {"num_loops", 0, "num_loops"},         {"num_loops", -2, "num_loops"},
      {"num_loops", "3", "num_loops"},       {"lora_rank", -1, "lora_rank"},
      {"lora_alpha", nullptr, "lora_alpha"},
  };
  for (const Case& c : cases) {
    nlohmann::json config = base;
    config[c.key] = c.value;
    absl::StatusOr<ModelConfig> parsed =
        ModelConfig::FromJson(config.dump(), "dir/config.json");
    ASSERT_FALSE(parsed.ok()) << c.key << "=" << c.value;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr("dir/config.json"));
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.message));
  }
  // Recursion keys on a plain architecture are refused, not ignored.
  nlohmann::json llama = base;
  llama["architectures"] = {"LlamaForCausalLM"};
  llama["model_type"] = "llama";
  absl::StatusOr<ModelConfig> parsed =
      ModelConfig::FromJson(llama.dump(), "config.json");
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr("num_loops"));
  // The model_type alone implies the architecture.
  nlohmann::json typed = base;
  typed.erase("architectures");
  parsed = ModelConfig::FromJson(typed.dump(), "config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->architecture, "StrataRecursiveLlamaForCausalLM");
}

// A copy of the fixture folder whose config.json and weight file can be
// altered.
class AlteredFixture {
 public:
  AlteredFixture() {
    std::string tmpl = ::testing::TempDir() + "/strata_recursive_XXXXXX";
    EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (const char* name : {"config.json", "model.safetensors"}) {
      std::filesystem::copy_file(FixtureDir() + "/" + name, dir_ + "/" + name);
    }
  }
  ~AlteredFixture() { std::filesystem::remove_all(dir_); }

  const std::string& dir() const { return dir_; }

  void SetConfig(const std::string& key, const nlohmann::json& value) {
    nlohmann::json config = ReadJson(dir_ + "/config.json");
    config[key] = value;
    std::ofstream(dir_ + "/config.json", std::ios::trunc) << config.dump();
  }

  // Renames a tensor in the safetensors header (same length, so the data
  // offsets stay valid).
  void RenameTensor(const std::string& from, const std::string& to) {
    ASSERT_EQ(from.size(), to.size());
    const std::string path = dir_ + "/model.safetensors";
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string bytes = buffer.str();
    const size_t at = bytes.find("\"" + from + "\"");
    ASSERT_NE(at, std::string::npos) << from;
    bytes.replace(at + 1, from.size(), to);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }

  absl::Status CreateRunner() const {
    ModelRunner::Options options;
    options.model_dir = dir_;
    options.block_size = kBlockSize;
    options.kv_cache_bytes = 1 << 20;
    options.backend.num_threads = 1;
    return ModelRunner::Create(options).status();
  }

 private:
  std::string dir_;
};

TEST(RecursiveLoadTest, RefusesBadNumLoops) {
  AlteredFixture fixture;
  fixture.SetConfig("num_loops", 0);
  const absl::Status status = fixture.CreateRunner();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("config.json"));
  EXPECT_THAT(status.message(), HasSubstr("num_loops"));
}

TEST(RecursiveLoadTest, RefusesMissingLoraTensor) {
  AlteredFixture fixture;
  const std::string name = "model.loops.2.layers.1.mlp.down_proj.lora_B";
  fixture.RenameTensor(name, "model.loopz.2.layers.1.mlp.down_proj.lora_B");
  const absl::Status status = fixture.CreateRunner();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(name));
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
}

TEST(RecursiveLoadTest, RefusesMisShapedLoraTensor) {
  AlteredFixture fixture;
  fixture.SetConfig("lora_rank", 8);  // the stored LoRA is rank 4
  const absl::Status status = fixture.CreateRunner();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("lora_A"));
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
}

TEST(RecursiveLoadTest, RefusesLoraTensorsWithoutLoraRank) {
  AlteredFixture fixture;
  fixture.SetConfig("lora_rank", 0);
  const absl::Status status = fixture.CreateRunner();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.loops."));
}

// ---- Full depth against reference.json ----

struct ReferenceStep {
  std::vector<TokenId> input_ids;
  int32_t start_position = 0;
  std::vector<std::vector<float>> logits;
};

std::vector<ReferenceStep> LoadReferenceSteps(std::vector<TokenId>* generated) {
  const nlohmann::json json = ReadJson(FixtureDir() + "/reference.json");
  std::vector<ReferenceStep> steps;
  for (const auto& step : json["steps"]) {
    steps.push_back({step["input_ids"].get<std::vector<TokenId>>(),
                     step["start_position"].get<int32_t>(),
                     Rows(step["logits"])});
  }
  *generated = json["generated_ids"].get<std::vector<TokenId>>();
  return steps;
}

// Runs every reference step (prefill, then 20 decode tokens) either
// sequence-wise (all loops per step) or depth-wise (one loop per step, the
// state carried), returning the logits of every step's rows at full depth.
std::vector<std::vector<std::vector<float>>> RunFullDepth(
    ModelRunner& runner, const std::vector<ReferenceStep>& steps,
    bool depth_wise, std::span<const int32_t> table) {
  std::vector<std::vector<std::vector<float>>> out;
  for (const ReferenceStep& step : steps) {
    const int32_t loop_step = depth_wise ? 1 : kNumLoops;
    for (int32_t begin = 0; begin < kNumLoops; begin += loop_step) {
      StepPlan plan;
      plan.items.push_back(Item(1, step.input_ids, step.start_position, table,
                                begin, depth_wise ? begin + 1 : -1));
      absl::StatusOr<std::vector<std::vector<float>>> logits =
          ModelRunnerTestPeer(runner).ComputeAllLogits(plan);
      EXPECT_TRUE(logits.ok()) << logits.status();
      if (!logits.ok()) return out;
      if (begin + loop_step == kNumLoops) out.push_back(*logits);
    }
  }
  EXPECT_EQ(runner.num_kept_states(), 0u);
  return out;
}

TEST(RecursiveModelTest, FullDepthMatchesReferenceSequenceAndDepthWise) {
  std::vector<TokenId> generated;
  const std::vector<ReferenceStep> steps = LoadReferenceSteps(&generated);
  ASSERT_EQ(steps.size(), 21u);
  const std::vector<int32_t> table = ShuffledBlocks(12, 5);

  std::unique_ptr<ModelRunner> seq = MakeRunner("propagate");
  std::unique_ptr<ModelRunner> depth = MakeRunner("propagate");
  ASSERT_NE(seq, nullptr);
  ASSERT_NE(depth, nullptr);
  const auto seq_logits = RunFullDepth(*seq, steps, false, table);
  const auto depth_logits = RunFullDepth(*depth, steps, true, table);
  ASSERT_EQ(seq_logits.size(), steps.size());
  ASSERT_EQ(depth_logits.size(), steps.size());

  DiffStats stats;
  for (size_t s = 0; s < steps.size(); ++s) {
    ASSERT_EQ(seq_logits[s].size(), steps[s].logits.size());
    for (size_t r = 0; r < steps[s].logits.size(); ++r) {
      stats.Check(seq_logits[s][r], steps[s].logits[r],
                  "step " + std::to_string(s) + " row " + std::to_string(r));
      // Depth-wise: the same ops on the same values, bit for bit.
      EXPECT_EQ(0,
                std::memcmp(seq_logits[s][r].data(), depth_logits[s][r].data(),
                            seq_logits[s][r].size() * sizeof(float)))
          << "step " << s << " row " << r;
    }
    EXPECT_EQ(Argmax(seq_logits[s].back()), generated[s]) << "step " << s;
  }
  RecordProperty("max_abs_diff", std::to_string(stats.max_abs));
  std::printf("full depth: max |logit - reference| = %.3g\n", stats.max_abs);
}

// Greedy generation through Execute (sampling in the engine): depth-wise
// and sequence-wise produce the reference's tokens with identical logprobs.
TEST(RecursiveModelTest, GreedyTokensIdenticalSequenceAndDepthWise) {
  std::vector<TokenId> generated;
  const std::vector<ReferenceStep> steps = LoadReferenceSteps(&generated);
  const std::vector<int32_t> table = ShuffledBlocks(12, 9);
  const SamplingParams greedy = Greedy();
  for (bool depth_wise : {false, true}) {
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
    ASSERT_NE(runner, nullptr);
    std::vector<TokenId> tokens = steps[0].input_ids;
    const size_t prompt_len = tokens.size();
    std::vector<float> logprobs;
    for (size_t s = 0; s < steps.size(); ++s) {
      const int32_t start =
          s == 0 ? 0 : static_cast<int32_t>(tokens.size()) - 1;
      const std::span<const TokenId> input =
          s == 0 ? std::span<const TokenId>(tokens)
                 : std::span<const TokenId>(tokens).subspan(tokens.size() - 1);
      std::vector<TokenId> fed(input.begin(), input.end());
      std::optional<SampledToken> sampled;
      for (int32_t begin = 0; begin < kNumLoops;
           begin += depth_wise ? 1 : kNumLoops) {
        StepPlan plan;
        WorkItem item =
            Item(7, fed, start, table, begin, depth_wise ? begin + 1 : -1);
        item.sample = true;
        item.sampling = &greedy;
        item.prompt_tokens = std::span<const TokenId>(tokens).first(prompt_len);
        plan.items.push_back(item);
        absl::StatusOr<StepResult> result = runner->Execute(plan);
        ASSERT_TRUE(result.ok()) << result.status();
        const ItemResult& r = result->items[0];
        const bool last = !depth_wise || begin == kNumLoops - 1;
        EXPECT_EQ(r.sampled.has_value(), last);
        EXPECT_EQ(r.loops_done, depth_wise ? begin + 1 : kNumLoops);
        EXPECT_EQ(r.exit_loop, last ? kNumLoops - 1 : -1);
        EXPECT_FALSE(r.needs_kv_fill);
        if (last) sampled = r.sampled;
      }
      ASSERT_TRUE(sampled.has_value());
      EXPECT_EQ(sampled->token, generated[s]) << "step " << s;
      logprobs.push_back(sampled->logprob);
      tokens.push_back(sampled->token);
    }
    static std::vector<float> first_logprobs;
    if (!depth_wise) {
      first_logprobs = logprobs;
    } else {
      EXPECT_EQ(logprobs, first_logprobs);
    }
    EXPECT_EQ(runner->num_kept_states(), 0u);
  }
}

// ---- Forced exits and the threshold run against forced_exits.json ----

struct ExitStep {
  std::vector<TokenId> input_ids;
  int32_t start_position = 0;
  int32_t exit_loop = 0;
  std::vector<float> max_prob, margin;  // per computed loop
  std::vector<float> logits;            // the exit loop's (forced runs)
};

struct KvEntry {
  int32_t position = 0;
  int32_t kv_layer = 0;
  std::vector<float> k, v;  // [kv_heads * head_dim]
};

struct ExitRun {
  std::vector<ExitStep> steps;
  std::vector<TokenId> generated;
  std::vector<KvEntry> kv;
};

struct ExitFixture {
  std::vector<TokenId> prompt;
  std::map<int32_t, int32_t> forced;  // decode step (1-based) -> exit loop
  std::map<std::string, ExitRun> policies;
  ExitRun threshold_run;
  float threshold = 0.0f;
};

ExitRun ParseRun(const nlohmann::json& run) {
  ExitRun out;
  for (const auto& step : run["steps"]) {
    ExitStep s;
    s.input_ids = step["input_ids"].get<std::vector<TokenId>>();
    s.start_position = step["start_position"].get<int32_t>();
    s.exit_loop = step["exit_loop"].get<int32_t>();
    s.max_prob = step["confidence"]["max_prob"].get<std::vector<float>>();
    s.margin = step["confidence"]["margin"].get<std::vector<float>>();
    if (step.contains("logits")) {
      s.logits = step["logits"][0].get<std::vector<float>>();
    }
    out.steps.push_back(std::move(s));
  }
  out.generated = run["generated_ids"].get<std::vector<TokenId>>();
  if (run.contains("kv")) {
    for (const auto& entry : run["kv"]) {
      KvEntry e;
      e.position = entry["position"].get<int32_t>();
      e.kv_layer = entry["kv_layer"].get<int32_t>();
      for (const auto& head : entry["k"]) {
        for (float x : head.get<std::vector<float>>()) e.k.push_back(x);
      }
      for (const auto& head : entry["v"]) {
        for (float x : head.get<std::vector<float>>()) e.v.push_back(x);
      }
      out.kv.push_back(std::move(e));
    }
  }
  return out;
}

ExitFixture LoadExitFixture() {
  const nlohmann::json json = ReadJson(FixtureDir() + "/forced_exits.json");
  ExitFixture f;
  f.prompt = json["prompt_ids"].get<std::vector<TokenId>>();
  EXPECT_EQ(json["num_loops"].get<int32_t>(), kNumLoops);
  for (const auto& [step, loop] : json["forced_exits"].items()) {
    f.forced[std::stoi(step)] = loop.get<int32_t>();
  }
  for (const char* policy : {"propagate", "recompute"}) {
    f.policies[policy] = ParseRun(json["policies"][policy]);
  }
  f.threshold_run = ParseRun(json["threshold_run"]);
  f.threshold = json["threshold_run"]["threshold"].get<float>();
  EXPECT_EQ(json["threshold_run"]["confidence"], "max_prob");
  EXPECT_EQ(json["threshold_run"]["min_loops"], 1);
  EXPECT_EQ(json["threshold_run"]["kv_policy"], "propagate");
  return f;
}

// How a recompute fill is scheduled in the tests.
enum class FillMode {
  kOwnStep,   // a step of its own, right after the exit
  kNextStep,  // in the same step as the request's next token
};

struct DecodeOptions {
  std::string policy = "propagate";
  bool depth_wise = false;  // one loop per step (sequence-wise otherwise)
  FillMode fill = FillMode::kOwnStep;
  ExitConfidence confidence = ExitConfidence::kMaxProb;
  // Forced exits ({decode step: loop}) or, when empty, this threshold.
  std::map<int32_t, int32_t> forced;
  float threshold = 1.0f;
};

struct DecodeStep {
  int32_t exit_loop = -1;
  std::optional<float> confidence;
  std::vector<float> logits;  // the sampled token's
  TokenId input = 0;
  TokenId sampled = 0;
};

// Greedy generation of `num_steps` decode tokens after a full-depth prefill,
// with exits, following the fixture's protocol. Fills *runner's cache.
std::vector<DecodeStep> Decode(ModelRunner& runner,
                               const std::vector<TokenId>& prompt,
                               int32_t num_steps, const DecodeOptions& opts,
                               std::span<const int32_t> table,
                               TokenId* first_token) {
  const SamplingParams greedy = Greedy();
  std::vector<DecodeStep> out;
  std::vector<std::vector<float>> logits;
  // Prefill, full depth.
  {
    StepPlan plan;
    WorkItem item = Item(3, prompt, 0, table);
    item.sample = true;
    item.sampling = &greedy;
    plan.items.push_back(item);
    absl::StatusOr<StepResult> r =
        ModelRunnerTestPeer(runner).ExecuteWithLogits(plan, &logits);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    *first_token = r->items[0].sampled->token;
  }
  TokenId next = *first_token;
  // A pending recompute fill: (token, position, loop_begin).
  std::optional<std::tuple<TokenId, int32_t, int32_t>> fill;
  std::vector<TokenId> fill_token(1);
  for (int32_t s = 1; s <= num_steps; ++s) {
    const int32_t pos = static_cast<int32_t>(prompt.size()) + s - 1;
    ExitParams exit;
    exit.confidence = opts.confidence;
    exit.threshold = opts.threshold;
    if (!opts.forced.empty()) {
      exit.threshold = 1.0f;
      auto it = opts.forced.find(s);
      exit.forced_exit_loop = it == opts.forced.end() ? -1 : it->second;
    }
    const std::vector<TokenId> input = {next};
    DecodeStep step;
    step.input = next;
    for (int32_t begin = 0; begin < kNumLoops;) {
      StepPlan plan;
      if (fill.has_value() && opts.fill == FillMode::kNextStep) {
        fill_token[0] = std::get<0>(*fill);
        WorkItem f =
            Item(3, fill_token, std::get<1>(*fill), table, std::get<2>(*fill));
        f.kv_fill = true;
        plan.items.push_back(f);
        fill.reset();
      }
      WorkItem item =
          Item(3, input, pos, table, begin, opts.depth_wise ? begin + 1 : -1);
      item.sample = true;
      item.sampling = &greedy;
      item.exit = &exit;
      plan.items.push_back(item);
      absl::StatusOr<StepResult> r =
          ModelRunnerTestPeer(runner).ExecuteWithLogits(plan, &logits);
      EXPECT_TRUE(r.ok()) << r.status() << " at step " << s;
      if (!r.ok()) return out;
      const ItemResult& res = r->items.back();
      if (res.exit_confidence.has_value())
        step.confidence = res.exit_confidence;
      if (!res.sampled.has_value()) {
        EXPECT_EQ(res.exit_loop, -1);
        EXPECT_EQ(res.loops_done, begin + 1);
        begin = res.loops_done;
        continue;
      }
      step.exit_loop = res.exit_loop;
      step.sampled = res.sampled->token;
      step.logits = logits.back();
      EXPECT_EQ(res.loops_done, res.exit_loop + 1);
      EXPECT_EQ(res.needs_kv_fill,
                opts.policy == "recompute" && res.exit_loop < kNumLoops - 1);
      if (res.needs_kv_fill) fill.emplace(next, pos, res.exit_loop + 1);
      break;
    }
    if (fill.has_value() && opts.fill == FillMode::kOwnStep) {
      fill_token[0] = std::get<0>(*fill);
      StepPlan plan;
      WorkItem f =
          Item(3, fill_token, std::get<1>(*fill), table, std::get<2>(*fill));
      f.kv_fill = true;
      plan.items.push_back(f);
      absl::StatusOr<StepResult> r = runner.Execute(plan);
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) {
        EXPECT_FALSE(r->items[0].sampled.has_value());
        EXPECT_EQ(r->items[0].loops_done, kNumLoops);
      }
      fill.reset();
    }
    next = step.sampled;
    out.push_back(std::move(step));
  }
  if (fill.has_value()) {  // the last step's fill, for the KV checks
    fill_token[0] = std::get<0>(*fill);
    StepPlan plan;
    WorkItem f =
        Item(3, fill_token, std::get<1>(*fill), table, std::get<2>(*fill));
    f.kv_fill = true;
    plan.items.push_back(f);
    EXPECT_TRUE(runner.Execute(plan).ok());
  }
  EXPECT_EQ(runner.num_kept_states(), 0u);
  return out;
}

struct ForcedCase {
  std::string policy;
  bool depth_wise;
  FillMode fill;
};

void PrintTo(const ForcedCase& c, std::ostream* os) {
  *os << c.policy << (c.depth_wise ? " depth-wise" : " sequence-wise")
      << (c.fill == FillMode::kNextStep ? ", fill with the next token" : "");
}

class ForcedExitTest : public testing::TestWithParam<ForcedCase> {};

TEST_P(ForcedExitTest, MatchesReferenceLogitsTokensAndKv) {
  const ForcedCase& c = GetParam();
  const ExitFixture fixture = LoadExitFixture();
  const ExitRun& ref = fixture.policies.at(c.policy);
  std::unique_ptr<ModelRunner> runner = MakeRunner(c.policy);
  ASSERT_NE(runner, nullptr);
  const std::vector<int32_t> table = ShuffledBlocks(12, 21);
  DecodeOptions opts;
  opts.policy = c.policy;
  opts.depth_wise = c.depth_wise;
  opts.fill = c.fill;
  opts.forced = fixture.forced;
  // One policy checks max_prob confidences, the other margins.
  opts.confidence = c.policy == "propagate" ? ExitConfidence::kMaxProb
                                            : ExitConfidence::kMargin;
  TokenId first = 0;
  const std::vector<DecodeStep> steps =
      Decode(*runner, fixture.prompt, static_cast<int32_t>(ref.steps.size()),
             opts, table, &first);
  ASSERT_EQ(steps.size(), ref.steps.size());
  EXPECT_EQ(first, ref.generated[0]);

  DiffStats stats;
  float max_conf_diff = 0.0f;
  for (size_t s = 0; s < steps.size(); ++s) {
    const ExitStep& want = ref.steps[s];
    const DecodeStep& got = steps[s];
    const std::string where = c.policy + " step " + std::to_string(s + 1);
    EXPECT_EQ(got.input, want.input_ids[0]) << where;
    EXPECT_EQ(got.exit_loop, want.exit_loop) << where;
    stats.Check(got.logits, want.logits, where);
    EXPECT_EQ(got.sampled, ref.generated[s + 1]) << where;
    // The forced loop is the only one evaluated: its confidence is reported.
    const auto it = fixture.forced.find(static_cast<int32_t>(s + 1));
    if (it != fixture.forced.end()) {
      ASSERT_TRUE(got.confidence.has_value()) << where;
      const std::vector<float>& conf =
          opts.confidence == ExitConfidence::kMaxProb ? want.max_prob
                                                      : want.margin;
      const float diff = std::fabs(*got.confidence - conf[want.exit_loop]);
      max_conf_diff = std::max(max_conf_diff, diff);
      EXPECT_LE(diff, kConfidenceTolerance) << where;
    } else {
      EXPECT_FALSE(got.confidence.has_value()) << where;
    }
  }

  // The listed cache entries: skipped/propagated ones and ordinary ones.
  float max_kv_diff = 0.0f;
  std::vector<float> k, v;
  for (const KvEntry& e : ref.kv) {
    ASSERT_TRUE(ModelRunnerTestPeer(*runner)
                    .ReadKv(e.kv_layer, table, e.position, &k, &v)
                    .ok());
    const std::string where = c.policy + " kv layer " +
                              std::to_string(e.kv_layer) + " position " +
                              std::to_string(e.position);
    DiffStats kv_stats;
    kv_stats.Check(k, e.k, where + " K");
    kv_stats.Check(v, e.v, where + " V");
    max_kv_diff = std::max(max_kv_diff, kv_stats.max_abs);
  }
  RecordProperty("max_abs_diff", std::to_string(stats.max_abs));
  RecordProperty("max_kv_diff", std::to_string(max_kv_diff));
  std::printf(
      "%s%s: max |logit - reference| = %.3g, |K/V - reference| = %.3g, "
      "|confidence - reference| = %.3g\n",
      c.policy.c_str(), c.depth_wise ? " depth-wise" : "", stats.max_abs,
      max_kv_diff, max_conf_diff);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, ForcedExitTest,
    testing::Values(ForcedCase{"propagate", false, FillMode::kOwnStep},
                    ForcedCase{"propagate", true, FillMode::kOwnStep},
                    ForcedCase{"recompute", false, FillMode::kOwnStep},
                    ForcedCase{"recompute", false, FillMode::kNextStep},
                    ForcedCase{"recompute", true, FillMode::kNextStep}),
    [](const testing::TestParamInfo<ForcedCase>& info) {
      return info.param.policy + (info.param.depth_wise ? "_depth" : "_seq") +
             (info.param.fill == FillMode::kNextStep ? "_fill_with_next" : "");
    });

// The confidence threshold run: the same exits and tokens, sequence-wise and
// depth-wise (the exit rule applied at each step's boundary).
TEST(RecursiveModelTest, ThresholdRunMatchesReference) {
  const ExitFixture fixture = LoadExitFixture();
  const ExitRun& ref = fixture.threshold_run;
  for (bool depth_wise : {false, true}) {
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
    ASSERT_NE(runner, nullptr);
    const std::vector<int32_t> table = ShuffledBlocks(12, 33);
    DecodeOptions opts;
    opts.depth_wise = depth_wise;
    opts.threshold = fixture.threshold;
    TokenId first = 0;
    const std::vector<DecodeStep> steps =
        Decode(*runner, fixture.prompt, static_cast<int32_t>(ref.steps.size()),
               opts, table, &first);
    ASSERT_EQ(steps.size(), ref.steps.size());
    EXPECT_EQ(first, ref.generated[0]);
    std::vector<int32_t> want_exits, got_exits;
    for (size_t s = 0; s < steps.size(); ++s) {
      want_exits.push_back(ref.steps[s].exit_loop);
      got_exits.push_back(steps[s].exit_loop);
      EXPECT_EQ(steps[s].sampled, ref.generated[s + 1]) << "step " << s + 1;
      // The last evaluated boundary's confidence (loops < N-1).
      const int32_t last_checked =
          std::min(ref.steps[s].exit_loop, kNumLoops - 2);
      ASSERT_TRUE(steps[s].confidence.has_value());
      EXPECT_NEAR(*steps[s].confidence, ref.steps[s].max_prob[last_checked],
                  kConfidenceTolerance)
          << "step " << s + 1;
    }
    EXPECT_EQ(got_exits, want_exits) << (depth_wise ? "depth-wise" : "");
  }
}

// ---- Hidden-state measures (saturation, classifier) ----

// The fixture folder with config.json naming its exit classifier
// (exit_classifier_fixture.safetensors), copied to a temporary folder.
std::string FixtureWithClassifier() {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::path(::testing::TempDir()) /
      ("strata_recursive_classifier_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::copy(FixtureDir(), dir, fs::copy_options::recursive);
  nlohmann::json config = ReadJson((dir / "config.json").string());
  config["exit_classifier"] = {{"file", "exit_classifier_fixture.safetensors"}};
  std::ofstream(dir / "config.json") << config.dump(1);
  return dir.string();
}

// The reference's threshold runs of tests/data/tiny-recursive/
// hidden_exits.json: the same exits, tokens and confidences, sequence-wise
// and depth-wise, with the LM head run only for the rows that exit.
// Exit-rule evaluations a decode run made: after every loop a token ran
// but the last (the rows of ModelRunner::step_timings().exit_checks).
int64_t ExpectedChecks(const std::vector<DecodeStep>& steps) {
  int64_t checks = 0;
  for (const DecodeStep& step : steps) {
    checks += std::min(step.exit_loop + 1, kNumLoops - 1);
  }
  return checks;
}

TEST(RecursiveModelTest, HiddenMeasureRunsMatchReference) {
  const nlohmann::json json = ReadJson(FixtureDir() + "/hidden_exits.json");
  const std::vector<TokenId> prompt =
      json["prompt_ids"].get<std::vector<TokenId>>();
  const std::string dir = FixtureWithClassifier();
  for (const auto& [name, kind] :
       {std::pair{"saturation", ExitConfidence::kSaturation},
        std::pair{"classifier", ExitConfidence::kClassifier}}) {
    const nlohmann::json& run = json["runs"][name];
    const std::vector<TokenId> generated =
        run["generated_ids"].get<std::vector<TokenId>>();
    for (bool depth_wise : {false, true}) {
      SCOPED_TRACE(std::string(name) + (depth_wise ? " depth-wise" : ""));
      std::unique_ptr<ModelRunner> runner = MakeRunner("propagate", 2, dir);
      ASSERT_NE(runner, nullptr);
      const std::vector<int32_t> table = ShuffledBlocks(12, 41);
      DecodeOptions opts;
      opts.depth_wise = depth_wise;
      opts.confidence = kind;
      opts.threshold = run["threshold"].get<float>();
      TokenId first = 0;
      const int32_t num_steps = static_cast<int32_t>(run["steps"].size());
      const std::vector<DecodeStep> steps =
          Decode(*runner, prompt, num_steps, opts, table, &first);
      ASSERT_EQ(steps.size(), run["steps"].size());
      EXPECT_EQ(first, generated[0]);
      std::vector<int32_t> want_exits, got_exits;
      for (size_t s = 0; s < steps.size(); ++s) {
        const nlohmann::json& ref = run["steps"][s];
        want_exits.push_back(ref["exit_loop"].get<int32_t>());
        got_exits.push_back(steps[s].exit_loop);
        EXPECT_EQ(steps[s].sampled, generated[s + 1]) << "step " << s + 1;
        const std::vector<float> conf =
            ref["confidence"].get<std::vector<float>>();
        ASSERT_TRUE(steps[s].confidence.has_value());
        EXPECT_NEAR(*steps[s].confidence, conf.back(), kConfidenceTolerance)
            << "step " << s + 1;
      }
      EXPECT_EQ(got_exits, want_exits);
      EXPECT_EQ(runner->step_timings().exit_checks.rows, ExpectedChecks(steps));
      EXPECT_GT(runner->step_timings().exit_checks.nanoseconds, 0);

      // The logits of an exit through the hidden-measure path (LM head on
      // the exiting rows only) are those of the same exit forced through
      // the softmax path (exit logits of every checked row, then a gather).
      std::unique_ptr<ModelRunner> forced_runner =
          MakeRunner("propagate", 2, dir);
      ASSERT_NE(forced_runner, nullptr);
      DecodeOptions forced = opts;
      forced.confidence = ExitConfidence::kMaxProb;
      for (size_t s = 0; s < steps.size(); ++s) {
        if (steps[s].exit_loop < kNumLoops - 1) {
          forced.forced[static_cast<int32_t>(s) + 1] = steps[s].exit_loop;
        }
      }
      ASSERT_FALSE(forced.forced.empty());
      const std::vector<DecodeStep> again =
          Decode(*forced_runner, prompt, num_steps, forced, table, &first);
      ASSERT_EQ(again.size(), steps.size());
      for (size_t s = 0; s < steps.size(); ++s) {
        EXPECT_EQ(again[s].exit_loop, steps[s].exit_loop);
        EXPECT_EQ(again[s].logits, steps[s].logits) << "step " << s + 1;
      }
    }
  }
}

// step_timings() counts one exit check per loop boundary a token's exit
// rule evaluated (after every loop it ran but the last) and none for
// full-depth or prefill rows, and the loops, LM head rows and sampled
// tokens the steps ran: the counts strata-engine-bench divides the times
// by. (The hidden measures' checks: HiddenMeasureRunsMatchReference.)
TEST(RecursiveModelTest, StepTimingsCountSoftmaxChecksAndNoneAtFullDepth) {
  const nlohmann::json json = ReadJson(FixtureDir() + "/hidden_exits.json");
  const std::vector<TokenId> prompt =
      json["prompt_ids"].get<std::vector<TokenId>>();
  const std::vector<int32_t> table = ShuffledBlocks(12, 43);
  for (const float threshold : {1.0f, 0.2f}) {
    for (bool depth_wise : {false, true}) {
      SCOPED_TRACE("threshold " + std::to_string(threshold) +
                   (depth_wise ? " depth-wise" : ""));
      std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
      ASSERT_NE(runner, nullptr);
      DecodeOptions opts;
      opts.depth_wise = depth_wise;
      opts.threshold = threshold;  // max_prob; 1 never evaluates
      TokenId first = 0;
      const std::vector<DecodeStep> steps =
          Decode(*runner, prompt, 6, opts, table, &first);
      const StepTimings timings = runner->step_timings();
      EXPECT_EQ(timings.exit_checks.rows,
                threshold < 1.0f ? ExpectedChecks(steps) : 0);
      EXPECT_EQ(timings.exit_checks.nanoseconds > 0, threshold < 1.0f);
      // The loops count a row per loop it ran (the prompt's rows every
      // loop); the LM head a row per token that finished at the last loop
      // (an exit's logits are its check's); sampling every token (on the
      // host: the test peer asks for the logits).
      int64_t row_loops = static_cast<int64_t>(prompt.size()) * kNumLoops;
      int64_t heads = 1;  // the prefill's
      for (const DecodeStep& step : steps) {
        row_loops += step.exit_loop + 1;
        heads += step.exit_loop == kNumLoops - 1 ? 1 : 0;
      }
      EXPECT_EQ(timings.loops.rows, row_loops);
      EXPECT_EQ(timings.head.rows, heads);
      EXPECT_EQ(timings.sampling.rows, 1 + static_cast<int64_t>(steps.size()));
    }
  }
}

// A classifier exit on a model without one is refused, naming it.
TEST(RecursiveModelTest, ClassifierExitNeedsAClassifier) {
  std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
  ASSERT_NE(runner, nullptr);
  const std::vector<int32_t> table = ShuffledBlocks(4, 5);
  const std::vector<TokenId> token = {7};
  const SamplingParams greedy = Greedy();
  ExitParams exit;
  exit.confidence = ExitConfidence::kClassifier;
  exit.threshold = 0.5f;
  StepPlan plan;
  plan.items.push_back(SampleItem(9, token, 0, table, &greedy, &exit));
  absl::StatusOr<StepResult> r = runner->Execute(plan);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("no exit classifier"));
}

// ---- Depth-wise batching: items at different loops share a step ----

// A request's schedule: its prefill, then decode tokens, each run one loop
// per step; every step's logits (at the state the rows end in).
struct Schedule {
  RequestId id;
  std::vector<TokenId> prompt;
  std::vector<int32_t> table;
  bool depth_wise = true;
  const ExitParams* exit = nullptr;
};

// Runs `schedules` together, request j starting `j` steps late, so that in
// most steps the items sit at different loops. Each step's ComputeAllLogits
// rows per request are appended to logits[j]. Decode tokens are the greedy
// argmax of the finished rows.
void RunTogether(ModelRunner& runner, const std::vector<Schedule>& schedules,
                 int32_t num_decode,
                 std::vector<std::vector<std::vector<float>>>* logits,
                 std::vector<std::vector<TokenId>>* tokens) {
  struct State {
    std::vector<TokenId> seq;  // prompt + fed tokens
    int32_t fed = 0;           // decode tokens fed so far
    int32_t loop = 0;          // next loop of the current token(s)
    int32_t delay = 0;
    bool done = false;
  };
  const size_t m = schedules.size();
  std::vector<State> states(m);
  logits->assign(m, {});
  tokens->assign(m, {});
  for (size_t j = 0; j < m; ++j) {
    states[j].seq = schedules[j].prompt;
    states[j].delay = static_cast<int32_t>(j);
  }
  std::vector<std::vector<TokenId>> inputs(m);
  for (int guard = 0; guard < 1000; ++guard) {
    StepPlan plan;
    std::vector<size_t> in_plan;
    for (size_t j = 0; j < m; ++j) {
      State& st = states[j];
      if (st.done) continue;
      if (st.delay > 0) {
        --st.delay;
        continue;
      }
      const Schedule& sc = schedules[j];
      const bool prefill = st.fed == 0 && st.seq.size() == sc.prompt.size();
      const int32_t start =
          prefill ? 0 : static_cast<int32_t>(st.seq.size()) - 1;
      inputs[j].assign(st.seq.begin() + start, st.seq.end());
      WorkItem item = Item(sc.id, inputs[j], start, sc.table, st.loop,
                           sc.depth_wise ? st.loop + 1 : -1);
      plan.items.push_back(item);
      in_plan.push_back(j);
    }
    if (plan.items.empty()) {
      bool all_done = true;
      for (const State& st : states) all_done &= st.done;
      if (all_done) return;
      continue;
    }
    absl::StatusOr<std::vector<std::vector<float>>> out =
        ModelRunnerTestPeer(runner).ComputeAllLogits(plan);
    ASSERT_TRUE(out.ok()) << out.status();
    size_t row = 0;
    for (size_t a = 0; a < in_plan.size(); ++a) {
      const size_t j = in_plan[a];
      State& st = states[j];
      const size_t count = plan.items[a].tokens.size();
      for (size_t r = 0; r < count; ++r) {
        (*logits)[j].push_back((*out)[row + r]);
      }
      st.loop = schedules[j].depth_wise ? st.loop + 1 : kNumLoops;
      if (st.loop == kNumLoops) {
        const TokenId next = Argmax((*out)[row + count - 1]);
        (*tokens)[j].push_back(next);
        st.seq.push_back(next);
        st.loop = 0;
        if (++st.fed > num_decode) st.done = true;
      }
      row += count;
    }
  }
  FAIL() << "did not finish";
}

TEST(RecursiveModelTest, ItemsAtDifferentLoopsMatchEachAlone) {
  std::vector<TokenId> generated;
  const std::vector<ReferenceStep> steps = LoadReferenceSteps(&generated);
  std::vector<Schedule> schedules;
  // Three requests: two depth-wise (one loop per step, started a step
  // apart), one sequence-wise (all loops per step).
  schedules.push_back({11, steps[0].input_ids, ShuffledBlocks(12, 1)});
  std::vector<TokenId> other;
  for (int i = 0; i < 9; ++i) other.push_back((i * 131 + 17) % 1790);
  schedules.push_back({12, other, {}});
  schedules.push_back({13, {5, 6, 7, 8, 9, 10, 11}, {}, false});
  // Disjoint blocks.
  std::vector<int32_t> all = ShuffledBlocks(kNumBlocks, 2);
  std::erase_if(all, [&](int32_t b) {
    return std::find(schedules[0].table.begin(), schedules[0].table.end(), b) !=
           schedules[0].table.end();
  });
  schedules[1].table.assign(all.begin(), all.begin() + 12);
  schedules[2].table.assign(all.begin() + 12, all.begin() + 24);
  constexpr int32_t kDecode = 6;

  // Together.
  std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
  ASSERT_NE(runner, nullptr);
  std::vector<std::vector<std::vector<float>>> together;
  std::vector<std::vector<TokenId>> together_tokens;
  RunTogether(*runner, schedules, kDecode, &together, &together_tokens);
  EXPECT_EQ(runner->num_kept_states(), 0u);

  // Each alone, on a fresh runner.
  for (size_t j = 0; j < schedules.size(); ++j) {
    std::unique_ptr<ModelRunner> alone_runner = MakeRunner("propagate", 1);
    ASSERT_NE(alone_runner, nullptr);
    std::vector<std::vector<std::vector<float>>> alone;
    std::vector<std::vector<TokenId>> alone_tokens;
    RunTogether(*alone_runner, {schedules[j]}, kDecode, &alone, &alone_tokens);
    EXPECT_EQ(together_tokens[j], alone_tokens[0]) << "request " << j;
    ASSERT_EQ(together[j].size(), alone[0].size()) << "request " << j;
    for (size_t r = 0; r < alone[0].size(); ++r) {
      EXPECT_EQ(0, std::memcmp(together[j][r].data(), alone[0][r].data(),
                               alone[0][r].size() * sizeof(float)))
          << "request " << j << " logits row " << r;
    }
  }
  // The first request follows the reference at full depth.
  for (int32_t s = 0; s < kDecode; ++s) {
    EXPECT_EQ(together_tokens[0][s], generated[s]) << "token " << s;
  }
}

// The first `count` block ids not in `table`, ascending.
std::vector<int32_t> BlocksOutside(const std::vector<int32_t>& table,
                                   size_t count) {
  std::vector<int32_t> blocks;
  for (int32_t b = 0; blocks.size() < count; ++b) {
    if (std::find(table.begin(), table.end(), b) == table.end()) {
      blocks.push_back(b);
    }
  }
  return blocks;
}

// Exits inside a mixed batch: a forced-exit request decoding sequence-wise
// shares every step with another request's prompt run one loop per step; the
// first gets the fixture's logits, exit loops and tokens, the second the
// logits it gets alone, bit for bit.
TEST(RecursiveModelTest, ExitsInAMixedBatchMatchAlone) {
  const ExitFixture fixture = LoadExitFixture();
  const ExitRun& ref = fixture.policies.at("propagate");
  const SamplingParams greedy = Greedy();
  const std::vector<int32_t> table_a = ShuffledBlocks(12, 40);
  const std::vector<int32_t> table_b = BlocksOutside(table_a, 4);
  const std::vector<TokenId> prompt_b = {100, 200, 300, 400, 500};
  auto item_b = [&](int32_t loop) {
    WorkItem b = Item(2, prompt_b, 0, table_b, loop, loop + 1);
    b.sample = true;
    b.sampling = &greedy;
    return b;
  };

  // B alone, sequence-wise.
  std::vector<float> b_alone;
  {
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate", 1);
    ASSERT_NE(runner, nullptr);
    StepPlan plan;
    WorkItem b = item_b(0);
    b.loop_end = -1;
    plan.items.push_back(b);
    std::vector<std::vector<float>> logits;
    ASSERT_TRUE(
        ModelRunnerTestPeer(*runner).ExecuteWithLogits(plan, &logits).ok());
    b_alone = logits[0];
  }

  std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
  ASSERT_NE(runner, nullptr);
  std::vector<std::vector<float>> logits;
  {
    StepPlan plan;
    WorkItem a = Item(1, fixture.prompt, 0, table_a);
    a.sample = true;
    a.sampling = &greedy;
    plan.items.push_back(a);
    absl::StatusOr<StepResult> r = runner->Execute(plan);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->items[0].sampled->token, ref.generated[0]);
  }
  DiffStats stats;
  int32_t b_passes = 0;
  std::vector<ExitParams> exits(ref.steps.size());
  for (size_t s = 0; s < ref.steps.size(); ++s) {
    const int32_t step = static_cast<int32_t>(s + 1);
    auto it = fixture.forced.find(step);
    exits[s].forced_exit_loop = it == fixture.forced.end() ? -1 : it->second;
    const int32_t b_loop = static_cast<int32_t>(s) % kNumLoops;
    StepPlan plan;
    plan.items.push_back(item_b(b_loop));
    WorkItem a =
        Item(1, ref.steps[s].input_ids, ref.steps[s].start_position, table_a);
    a.sample = true;
    a.sampling = &greedy;
    a.exit = &exits[s];
    plan.items.push_back(a);
    absl::StatusOr<StepResult> r =
        ModelRunnerTestPeer(*runner).ExecuteWithLogits(plan, &logits);
    ASSERT_TRUE(r.ok()) << r.status() << " step " << step;
    const ItemResult& ra = r->items[1];
    ASSERT_TRUE(ra.sampled.has_value());
    EXPECT_EQ(ra.sampled->token, ref.generated[s + 1]) << "step " << step;
    EXPECT_EQ(ra.exit_loop, ref.steps[s].exit_loop) << "step " << step;
    stats.Check(logits[1], ref.steps[s].logits, "step " + std::to_string(step));
    const ItemResult& rb = r->items[0];
    EXPECT_EQ(rb.loops_done, b_loop + 1);
    EXPECT_EQ(rb.sampled.has_value(), b_loop == kNumLoops - 1);
    if (rb.sampled.has_value()) {
      ++b_passes;
      EXPECT_EQ(0, std::memcmp(logits[0].data(), b_alone.data(),
                               b_alone.size() * sizeof(float)))
          << "step " << step;
    }
  }
  EXPECT_EQ(b_passes, static_cast<int32_t>(ref.steps.size()) / kNumLoops);
  runner->ReleaseState(2);
  EXPECT_EQ(runner->num_kept_states(), 0u);
}

// q/k/v and gate/up multiplied as one fused weight each (the default on the
// CPU) and apart give the same bits through depth-wise steps: rows of two
// loops in one step (two LoRA segments), forced exits and the K/V they
// propagate to the skipped loops.
TEST(RecursiveModelTest, FusedProjectionsMatchUnfusedBitForBit) {
  const ExitFixture fixture = LoadExitFixture();
  const ExitRun& ref = fixture.policies.at("propagate");
  const SamplingParams greedy = Greedy();
  const std::vector<int32_t> table_a = ShuffledBlocks(12, 41);
  const std::vector<int32_t> table_b = BlocksOutside(table_a, 4);
  const std::vector<TokenId> prompt_b = {100, 200, 300, 400, 500};
  std::vector<ExitParams> exits(ref.steps.size());
  for (size_t s = 0; s < ref.steps.size(); ++s) {
    auto it = fixture.forced.find(static_cast<int32_t>(s + 1));
    exits[s].forced_exit_loop = it == fixture.forced.end() ? -1 : it->second;
  }

  // Every step's logits (both items), exit loops, then A's K/V of every
  // kv layer at every position.
  struct Run {
    std::vector<std::vector<float>> logits;
    std::vector<int32_t> exit_loops;
    std::vector<std::vector<float>> kv;
  };
  auto run = [&](bool fuse) {
    Run out;
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate", 2, "", fuse);
    EXPECT_NE(runner, nullptr);
    if (runner == nullptr) return out;
    StepPlan prefill;
    WorkItem a = Item(1, fixture.prompt, 0, table_a);
    a.sample = true;
    a.sampling = &greedy;
    prefill.items.push_back(a);
    absl::StatusOr<StepResult> r = runner->Execute(prefill);
    EXPECT_TRUE(r.ok()) << r.status();
    for (size_t s = 0; s < ref.steps.size(); ++s) {
      const int32_t b_loop = static_cast<int32_t>(s) % kNumLoops;
      StepPlan plan;
      WorkItem b = Item(2, prompt_b, 0, table_b, b_loop, b_loop + 1);
      b.sample = true;
      b.sampling = &greedy;
      plan.items.push_back(b);
      WorkItem step_a =
          Item(1, ref.steps[s].input_ids, ref.steps[s].start_position, table_a);
      step_a.sample = true;
      step_a.sampling = &greedy;
      step_a.exit = &exits[s];
      plan.items.push_back(step_a);
      std::vector<std::vector<float>> logits;
      r = ModelRunnerTestPeer(*runner).ExecuteWithLogits(plan, &logits);
      EXPECT_TRUE(r.ok()) << r.status() << " step " << s + 1;
      if (!r.ok()) return out;
      out.exit_loops.push_back(r->items[1].exit_loop);
      for (std::vector<float>& row : logits) {
        out.logits.push_back(std::move(row));
      }
    }
    const int32_t positions = ref.steps.back().start_position + 1;
    for (int32_t kv_layer = 0; kv_layer < kNumLoops * 2; ++kv_layer) {
      for (int32_t pos = 0; pos < positions; ++pos) {
        std::vector<float> k, v;
        EXPECT_TRUE(ModelRunnerTestPeer(*runner)
                        .ReadKv(kv_layer, table_a, pos, &k, &v)
                        .ok());
        out.kv.push_back(std::move(k));
        out.kv.push_back(std::move(v));
      }
    }
    return out;
  };
  const Run fused = run(true);
  const Run apart = run(false);
  ASSERT_EQ(fused.logits.size(), 2 * ref.steps.size());
  EXPECT_EQ(fused.exit_loops, apart.exit_loops);
  // The fixture forces some early exits, so propagated K/V is compared too.
  EXPECT_GT(
      std::count_if(fused.exit_loops.begin(), fused.exit_loops.end(),
                    [](int32_t l) { return l >= 0 && l < kNumLoops - 1; }),
      0);
  ASSERT_EQ(fused.logits.size(), apart.logits.size());
  for (size_t i = 0; i < fused.logits.size(); ++i) {
    EXPECT_EQ(fused.logits[i], apart.logits[i]) << "logits row " << i;
  }
  EXPECT_EQ(fused.kv, apart.kv);
}

// Several rows exiting in one step, after different loops and through both
// paths, beside a row at full depth: the K/V propagated to every skipped
// loop (the base product once per exited row, copied to its skipped loops,
// written by a pool worker beside the sampling) and the logits are those of
// each row alone, bit for bit. The step takes one LM head for the finished
// rows: row 3's classifier exit waits for it, the softmax exits of rows 0
// and 2 (forced, after it in the decisions) run it early so that its rows
// stay contiguous, and row 4 (full depth) joins the rest at the end.
TEST(RecursiveModelTest, PropagatedKvOfSeveralExitsMatchEachAlone) {
  const SamplingParams greedy = Greedy();
  const std::vector<std::vector<TokenId>> prompts = {{11, 12, 13},
                                                     {200, 201, 202, 203, 204},
                                                     {300, 7, 301, 9},
                                                     {5, 6},
                                                     {77, 78, 79, 80}};
  // 2, 1, 2, 2 and 0 loops skipped.
  const std::vector<int32_t> exit_loops = {0, 1, 0, 0, kNumLoops - 1};
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> taken;
  for (size_t j = 0; j < prompts.size(); ++j) {
    tables.push_back(j == 0 ? ShuffledBlocks(2, 7) : BlocksOutside(taken, 2));
    taken.insert(taken.end(), tables[j].begin(), tables[j].end());
  }
  std::vector<ExitParams> exits(prompts.size());
  for (size_t j = 0; j < 3; ++j) exits[j].forced_exit_loop = exit_loops[j];
  exits[3].confidence = ExitConfidence::kClassifier;  // hidden-state path
  exits[3].threshold = 0.0f;  // any confidence exits after loop 0
  const std::vector<TokenId> token = {42};
  const std::string dir = FixtureWithClassifier();

  struct Out {
    std::vector<float> logits;
    std::vector<std::vector<float>> kv;  // every kv layer's K, V
  };
  // Prefills `which` (each in a step of its own), then decodes one token of
  // each in one step, and reads back what the step wrote.
  auto run = [&](const std::vector<size_t>& which) {
    std::vector<Out> out(which.size());
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate", 2, dir);
    EXPECT_NE(runner, nullptr);
    if (runner == nullptr) return out;
    StepPlan decode;
    for (size_t j : which) {
      StepPlan prefill;
      prefill.items.push_back(
          Item(static_cast<RequestId>(j + 1), prompts[j], 0, tables[j]));
      EXPECT_TRUE(runner->Execute(prefill).ok());
      WorkItem item = Item(static_cast<RequestId>(j + 1), token,
                           static_cast<int32_t>(prompts[j].size()), tables[j]);
      item.sample = true;
      item.sampling = &greedy;
      if (exit_loops[j] < kNumLoops - 1) item.exit = &exits[j];
      decode.items.push_back(item);
    }
    std::vector<std::vector<float>> logits;
    absl::StatusOr<StepResult> r =
        ModelRunnerTestPeer(*runner).ExecuteWithLogits(decode, &logits);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    for (size_t a = 0; a < which.size(); ++a) {
      const size_t j = which[a];
      EXPECT_EQ(r->items[a].exit_loop, exit_loops[j]);
      out[a].logits = logits[a];
      for (int32_t kv_layer = 0; kv_layer < kNumLoops * 2; ++kv_layer) {
        std::vector<float> k, v;
        EXPECT_TRUE(ModelRunnerTestPeer(*runner)
                        .ReadKv(kv_layer, tables[j],
                                static_cast<int32_t>(prompts[j].size()), &k, &v)
                        .ok());
        out[a].kv.push_back(std::move(k));
        out[a].kv.push_back(std::move(v));
      }
    }
    return out;
  };
  const std::vector<Out> together = run({0, 1, 2, 3, 4});
  ASSERT_EQ(together.size(), prompts.size());
  for (size_t j = 0; j < prompts.size(); ++j) {
    SCOPED_TRACE("row " + std::to_string(j));
    const std::vector<Out> alone = run({j});
    ASSERT_EQ(alone.size(), 1u);
    EXPECT_FALSE(together[j].logits.empty());
    EXPECT_EQ(together[j].logits, alone[0].logits);
    EXPECT_EQ(together[j].kv, alone[0].kv);
  }
  // The rows differ, so a copy to the wrong row could not pass unseen.
  EXPECT_NE(together[0].kv, together[2].kv);
  EXPECT_NE(together[3].logits, together[4].logits);
}

// A lone item's K/V propagated to skipped loops waits for the next step and
// joins its first round's products and writes. Whether the next step takes
// it or it is written with ops of its own first (FinishStep), the cache and
// the next steps' logits are the same, bit for bit, with fused and separate
// projections. Request 1 exits alone after loop 0 (two loops pending), then
// request 2 alone after loop 1 (one), whose step takes request 1's; the last
// step takes request 2's in a round of three decodes and a prefill.
TEST(RecursiveModelTest, PropagatedKvJoinsTheNextStepWithTheSameBits) {
  const SamplingParams greedy = Greedy();
  const std::vector<std::vector<TokenId>> prompts = {
      {11, 12, 13}, {200, 201, 202, 203, 204}, {300, 7, 301, 9}};
  const std::vector<TokenId> late_prompt = {40, 41, 42, 43, 44, 45};
  const std::vector<int32_t> exit_loops = {0, 1};  // requests 1 and 2
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> taken;
  for (size_t j = 0; j <= prompts.size(); ++j) {
    tables.push_back(j == 0 ? ShuffledBlocks(3, 5) : BlocksOutside(taken, 3));
    taken.insert(taken.end(), tables[j].begin(), tables[j].end());
  }
  std::vector<ExitParams> exits(exit_loops.size());
  for (size_t j = 0; j < exits.size(); ++j) {
    exits[j].forced_exit_loop = exit_loops[j];
  }
  const std::vector<TokenId> first = {42}, second = {43};

  struct Out {
    std::vector<std::vector<float>> logits;  // the three decode steps'
    std::vector<std::vector<float>> kv;      // every request, layer, position
  };
  auto run = [&](bool fuse, bool flush_first) {
    Out out;
    std::unique_ptr<ModelRunner> runner = MakeRunner("propagate", 2, "", fuse);
    EXPECT_NE(runner, nullptr);
    if (runner == nullptr) return out;
    ModelRunnerTestPeer peer(*runner);
    std::vector<int32_t> next_position;
    for (size_t j = 0; j < prompts.size(); ++j) {
      StepPlan prefill;
      prefill.items.push_back(
          Item(static_cast<RequestId>(j + 1), prompts[j], 0, tables[j]));
      EXPECT_TRUE(runner->Execute(prefill).ok());
      next_position.push_back(static_cast<int32_t>(prompts[j].size()));
    }
    auto decode = [&](size_t j, std::span<const TokenId> token) {
      return SampleItem(static_cast<RequestId>(j + 1), token,
                        next_position[j]++, tables[j], &greedy,
                        j < exits.size() ? &exits[j] : nullptr);
    };
    auto execute = [&](const StepPlan& plan) {
      if (flush_first) {
        EXPECT_TRUE(peer.FinishStep().ok());
        EXPECT_FALSE(peer.propagation_pending());
      }
      std::vector<std::vector<float>> logits;
      absl::StatusOr<StepResult> r = peer.ExecuteWithLogits(plan, &logits);
      EXPECT_TRUE(r.ok()) << r.status();
      out.logits.insert(out.logits.end(), logits.begin(), logits.end());
      return r;
    };
    for (size_t j = 0; j < exits.size(); ++j) {
      StepPlan alone;
      alone.items.push_back(decode(j, first));
      absl::StatusOr<StepResult> r = execute(alone);
      if (!r.ok()) return out;
      EXPECT_EQ(r->items[0].exit_loop, exit_loops[j]);
      // Its K/V waits; releasing another request leaves it waiting.
      EXPECT_TRUE(peer.propagation_pending());
      runner->ReleaseState(77);
      EXPECT_TRUE(peer.propagation_pending());
    }
    StepPlan last;
    last.items.push_back(decode(0, second));
    last.items.push_back(decode(1, second));
    last.items.push_back(decode(2, first));
    for (WorkItem& item : last.items) item.exit = nullptr;
    last.items.push_back(SampleItem(9, late_prompt, 0, tables.back(), &greedy));
    if (!execute(last).ok()) return out;
    EXPECT_FALSE(peer.propagation_pending());  // nothing exited
    next_position.push_back(static_cast<int32_t>(late_prompt.size()));
    for (size_t j = 0; j < tables.size(); ++j) {
      for (int32_t kv_layer = 0; kv_layer < kNumLoops * 2; ++kv_layer) {
        for (int32_t pos = 0; pos < next_position[j]; ++pos) {
          std::vector<float> k, v;
          EXPECT_TRUE(peer.ReadKv(kv_layer, tables[j], pos, &k, &v).ok());
          out.kv.push_back(std::move(k));
          out.kv.push_back(std::move(v));
        }
      }
    }
    return out;
  };
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused projections" : "separate projections");
    const Out merged = run(fuse, false);
    const Out apart = run(fuse, true);
    ASSERT_EQ(merged.logits.size(), 2 + prompts.size() + 1);
    EXPECT_FALSE(merged.kv.empty());
    EXPECT_EQ(merged.logits, apart.logits);
    EXPECT_EQ(merged.kv, apart.kv);
  }
}

// A request released with propagated K/V pending (its lone step's, for the
// next step) gets it written first: the scheduler may have given its blocks
// to the prefix cache.
TEST(RecursiveModelTest, ReleasingARequestWritesItsPendingKv) {
  const SamplingParams greedy = Greedy();
  const std::vector<TokenId> prompt = {5, 6, 7};
  const std::vector<TokenId> token = {42};
  const std::vector<int32_t> table = ShuffledBlocks(2, 3);
  ExitParams exit;
  exit.forced_exit_loop = 0;
  std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
  ASSERT_NE(runner, nullptr);
  ModelRunnerTestPeer peer(*runner);
  StepPlan prefill;
  prefill.items.push_back(Item(1, prompt, 0, table));
  ASSERT_TRUE(runner->Execute(prefill).ok());
  StepPlan decode;
  decode.items.push_back(SampleItem(1, token, 3, table, &greedy, &exit));
  ASSERT_TRUE(runner->Execute(decode).ok());
  ASSERT_TRUE(peer.propagation_pending());
  runner->ReleaseState(1);
  EXPECT_FALSE(peer.propagation_pending());
}

// A block copy (copy-on-write) copies every loop's K/V of the block.
TEST(RecursiveModelTest, BlockCopyCopiesEveryLoop) {
  std::unique_ptr<ModelRunner> runner = MakeRunner("propagate");
  ASSERT_NE(runner, nullptr);
  const std::vector<TokenId> prompt = {1792, 79, 110, 313, 309, 640};
  const std::vector<int32_t> table = {9, 4};
  StepPlan prefill;
  prefill.items.push_back(Item(1, prompt, 0, table));
  ASSERT_TRUE(runner->Execute(prefill).ok());
  StepPlan copy;
  copy.block_copies.push_back({4, 30});
  ASSERT_TRUE(runner->Execute(copy).ok());
  const std::vector<int32_t> copied = {9, 30};
  std::vector<float> k, v, k2, v2;
  for (int32_t kv_layer = 0; kv_layer < 2 * kNumLoops; ++kv_layer) {
    for (int32_t pos = 4; pos < 6; ++pos) {
      ASSERT_TRUE(ModelRunnerTestPeer(*runner)
                      .ReadKv(kv_layer, table, pos, &k, &v)
                      .ok());
      ASSERT_TRUE(ModelRunnerTestPeer(*runner)
                      .ReadKv(kv_layer, copied, pos, &k2, &v2)
                      .ok());
      EXPECT_EQ(k, k2) << "kv layer " << kv_layer << " position " << pos;
      EXPECT_EQ(v, v2) << "kv layer " << kv_layer << " position " << pos;
      EXPECT_NE(k[0], 0.0f);
    }
  }
}

// Prompt tokens that exit (no sampling), as the scheduler sends a prompt
// with --prompt_exits: each token its own item, one loop per step, every
// token but the last with exit parameters. Each token must be computed
// exactly as if it had been decoded alone with the same exit: the same
// bits for the last prompt token's logits and for the tokens decoded
// after it, whose attention reads the propagated K/V of the skipped loops.
// A full-depth prompt gives other logits (the exits changed something).
TEST(RecursiveModelTest, PromptTokensExitLikeTokensDecodedAlone) {
  const std::vector<TokenId> prompt = {1792, 79, 110, 313, 42, 7, 300};
  const int32_t p = static_cast<int32_t>(prompt.size());
  const std::vector<int32_t> table = ShuffledBlocks(4, 17);
  const SamplingParams greedy = Greedy();
  // Token j exits after loop j % 3 (loops 0 and 1; 2 = full depth); the
  // last runs every loop and samples.
  std::vector<ExitParams> exits(p);
  for (int32_t j = 0; j < p; ++j) {
    exits[j].confidence =
        j % 2 == 0 ? ExitConfidence::kClassifier : ExitConfidence::kMaxProb;
    exits[j].forced_exit_loop = j % 3 < kNumLoops - 1 ? j % 3 : -1;
  }
  auto has_exit = [&](int32_t j) {
    return j < p - 1 && exits[j].forced_exit_loop >= 0;
  };
  // Greedy continuation after the prompt: its logits, full depth.
  auto continue_decoding = [&](ModelRunner& runner, TokenId first) {
    std::vector<std::vector<float>> out;
    std::vector<std::vector<float>> logits;
    TokenId next = first;
    for (int32_t t = 0; t < 3; ++t) {
      const std::vector<TokenId> input = {next};
      StepPlan plan;
      plan.items.push_back(SampleItem(1, input, p + t, table, &greedy));
      absl::StatusOr<StepResult> r =
          ModelRunnerTestPeer(runner).ExecuteWithLogits(plan, &logits);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) return out;
      out.push_back(logits[0]);
      next = r->items[0].sampled->token;
    }
    return out;
  };
  const std::string model = FixtureWithClassifier();

  // A: the prompt in per-loop steps, a single-token item per token still
  // running.
  std::unique_ptr<ModelRunner> a = MakeRunner("propagate", 2, model);
  ASSERT_NE(a, nullptr);
  std::vector<float> a_last;
  TokenId a_first = -1;
  std::vector<bool> done(p, false);
  int32_t prompt_exits = 0;
  for (int32_t loop = 0; loop < kNumLoops; ++loop) {
    StepPlan plan;
    std::vector<int32_t> which;
    for (int32_t j = 0; j < p; ++j) {
      if (done[j]) continue;
      WorkItem item = Item(1, std::span<const TokenId>(prompt).subspan(j, 1), j,
                           table, loop, loop + 1);
      if (has_exit(j)) item.exit = &exits[j];
      if (j == p - 1 && loop == kNumLoops - 1) {
        item.sample = true;
        item.sampling = &greedy;
      }
      plan.items.push_back(item);
      which.push_back(j);
    }
    std::vector<std::vector<float>> logits;
    absl::StatusOr<StepResult> r =
        ModelRunnerTestPeer(*a).ExecuteWithLogits(plan, &logits);
    ASSERT_TRUE(r.ok()) << r.status() << " loop " << loop;
    for (size_t k = 0; k < which.size(); ++k) {
      const int32_t j = which[k];
      const ItemResult& res = r->items[k];
      if (j == p - 1) {
        EXPECT_EQ(res.sampled.has_value(), loop == kNumLoops - 1);
        if (res.sampled.has_value()) {
          a_first = res.sampled->token;
          a_last = logits[k];
        }
        continue;
      }
      EXPECT_FALSE(res.sampled.has_value()) << "token " << j;
      if (has_exit(j) && exits[j].forced_exit_loop == loop) {
        EXPECT_EQ(res.exit_loop, loop) << "token " << j;
        EXPECT_TRUE(res.exit_confidence.has_value()) << "token " << j;
        EXPECT_EQ(res.loops_done, loop + 1);
        done[j] = true;
        ++prompt_exits;
      } else if (loop == kNumLoops - 1) {
        EXPECT_EQ(res.exit_loop, kNumLoops - 1) << "token " << j;
      } else {
        EXPECT_EQ(res.exit_loop, -1) << "token " << j;
      }
    }
  }
  EXPECT_EQ(prompt_exits, 4);  // tokens 0, 1, 3, 4
  ASSERT_GE(a_first, 0);
  const std::vector<std::vector<float>> a_next = continue_decoding(*a, a_first);
  a->ReleaseState(1);
  EXPECT_EQ(a->num_kept_states(), 0u);

  // B: the same tokens decoded one per step, whole passes, each with its
  // exit inside the step (the lone sequence's merged propagation).
  std::unique_ptr<ModelRunner> b = MakeRunner("propagate", 2, model);
  ASSERT_NE(b, nullptr);
  std::vector<float> b_last;
  TokenId b_first = -1;
  for (int32_t j = 0; j < p; ++j) {
    StepPlan plan;
    plan.items.push_back(
        SampleItem(1, std::span<const TokenId>(prompt).subspan(j, 1), j, table,
                   &greedy, has_exit(j) ? &exits[j] : nullptr));
    std::vector<std::vector<float>> logits;
    absl::StatusOr<StepResult> r =
        ModelRunnerTestPeer(*b).ExecuteWithLogits(plan, &logits);
    ASSERT_TRUE(r.ok()) << r.status() << " token " << j;
    EXPECT_EQ(r->items[0].exit_loop,
              has_exit(j) ? exits[j].forced_exit_loop : kNumLoops - 1);
    b_first = r->items[0].sampled->token;
    b_last = logits[0];
  }
  EXPECT_EQ(a_last, b_last);
  EXPECT_EQ(a_first, b_first);
  EXPECT_EQ(a_next, continue_decoding(*b, b_first));

  // C: the prompt at full depth in one item.
  std::unique_ptr<ModelRunner> c = MakeRunner("propagate", 2, model);
  ASSERT_NE(c, nullptr);
  StepPlan plan;
  plan.items.push_back(SampleItem(1, prompt, 0, table, &greedy));
  std::vector<std::vector<float>> logits;
  absl::StatusOr<StepResult> r =
      ModelRunnerTestPeer(*c).ExecuteWithLogits(plan, &logits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(logits[0], a_last);
}

// ---- Plan validation and state lifetime ----

TEST(RecursiveModelTest, RejectsBadLoopItemsAndReleasesState) {
  std::unique_ptr<ModelRunner> runner = MakeRunner("recompute");
  ASSERT_NE(runner, nullptr);
  const std::vector<int32_t> table = ShuffledBlocks(4, 3);
  const std::vector<TokenId> prompt = {1792, 79, 110, 313};
  const std::vector<TokenId> one = {42};
  const SamplingParams greedy = Greedy();
  ExitParams exit;
  exit.forced_exit_loop = 0;
  auto run = [&](std::vector<WorkItem> items) {
    StepPlan plan;
    plan.items = std::move(items);
    return runner->Execute(plan).status();
  };
  auto expect_invalid = [&](std::vector<WorkItem> items,
                            const std::string& text) {
    const absl::Status status = run(std::move(items));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(status.message(), HasSubstr(text));
  };
  expect_invalid({Item(1, prompt, 0, table, 3)}, "loop_begin 3");
  expect_invalid({Item(1, prompt, 0, table, 1, 1)}, "loop_end 1");
  expect_invalid({Item(1, prompt, 0, table, 0, 4)}, "loop_end 4");
  expect_invalid({Item(1, prompt, 0, table, 1)}, "no hidden state");
  WorkItem multi = Item(1, prompt, 0, table);
  multi.sample = true;
  multi.sampling = &greedy;
  multi.exit = &exit;
  expect_invalid({multi}, "single token");
  // A token that may exit without sampling (a prompt token) must not be
  // followed in its step by a later position of its request that runs a
  // loop past its first: the skipped loops' K/V come after the step.
  WorkItem may_exit = Item(1, one, 0, table);
  may_exit.exit = &exit;
  expect_invalid({may_exit, Item(1, one, 1, table)}, "may exit");
  ExitParams bad_exit;
  bad_exit.forced_exit_loop = 2;
  WorkItem bad = Item(1, one, 0, table);
  bad.sample = true;
  bad.sampling = &greedy;
  bad.exit = &bad_exit;
  expect_invalid({bad}, "forced_exit_loop");
  WorkItem fill0 = Item(1, one, 0, table);
  fill0.kv_fill = true;
  expect_invalid({fill0}, "kv_fill");

  // Half a prompt's loops: the state is kept; the other items of a request
  // in one step must not read K/V not yet written.
  ASSERT_TRUE(run({Item(1, prompt, 0, table, 0, 1)}).ok());
  EXPECT_EQ(runner->num_kept_states(), 1u);
  expect_invalid({Item(1, prompt, 0, table, 2)}, "loops");
  expect_invalid(
      {Item(1, std::span<const TokenId>(prompt).first(3), 0, table, 1)},
      "3 tokens");
  WorkItem fill1 = Item(1, prompt, 0, table, 1);
  fill1.kv_fill = true;
  expect_invalid({fill1}, "not an early exit");
  const std::vector<TokenId> next = {7};
  expect_invalid({Item(1, prompt, 0, table, 1, 2), Item(1, next, 4, table)},
                 "a later item of a request");
  // Still usable; ReleaseState drops the kept state.
  runner->ReleaseState(99);
  EXPECT_EQ(runner->num_kept_states(), 1u);
  runner->ReleaseState(1);
  EXPECT_EQ(runner->num_kept_states(), 0u);
  expect_invalid({Item(1, prompt, 0, table, 1)}, "no hidden state");

  // An exit under recompute keeps the exit state for a kv_fill item only.
  ASSERT_TRUE(run({Item(1, prompt, 0, table)}).ok());
  WorkItem decode = Item(1, one, 4, table);
  decode.sample = true;
  decode.sampling = &greedy;
  decode.exit = &exit;
  StepPlan plan;
  plan.items = {decode};
  absl::StatusOr<StepResult> r = runner->Execute(plan);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->items[0].exit_loop, 0);
  EXPECT_TRUE(r->items[0].needs_kv_fill);
  EXPECT_EQ(runner->num_kept_states(), 1u);
  expect_invalid({Item(1, one, 4, table, 1)}, "only a kv_fill item");
  WorkItem fill = Item(1, one, 4, table, 1);
  fill.kv_fill = true;
  ASSERT_TRUE(run({fill}).ok());
  EXPECT_EQ(runner->num_kept_states(), 0u);
}

}  // namespace
}  // namespace strata
