// Recursive models through the real daemon: full depth equals the PyTorch
// reference and sequence-wise batching token for token, depth-wise batching
// of concurrent requests at different loops equals each request alone, early
// exit reports per-token loops, mean loops and the exit metrics, and the exit
// fields are validated.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::StratadDaemon;
using ::testing::HasSubstr;

std::string FixtureDir() {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-recursive";
}
std::string BundledDir() {
  return std::string(STRATA_SOURCE_DIR) + "/models/strata-recursive-tiny";
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

struct Output {
  std::vector<int32_t> ids;
  std::vector<uint32_t> loops;  // per token, from the logprobs
  double mean_loops = 0;
};

// threshold < 0 / no confidence: the fields are left unset (the model's
// defaults apply).
absl::StatusOr<Output> Complete(
    StratadDaemon& daemon, const std::vector<int32_t>& prompt,
    uint32_t max_tokens, float threshold = -1.0f, uint32_t min_loops = 0,
    std::optional<v1::ExitConfidence> confidence = std::nullopt) {
  v1::CompletionRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_temperature(0.0f);
  sampling.set_max_tokens(max_tokens);
  sampling.set_ignore_eos(true);
  sampling.set_logprobs(true);
  if (threshold >= 0.0f) sampling.set_exit_threshold(threshold);
  if (min_loops > 0) sampling.set_exit_min_loops(min_loops);
  if (confidence.has_value()) sampling.set_exit_confidence(*confidence);
  auto stub = v1::Generation::NewStub(daemon.channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  v1::CompletionResponse response;
  const grpc::Status status = stub->Complete(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  Output out;
  out.ids.assign(response.token_ids().begin(), response.token_ids().end());
  for (const v1::TokenLogprob& lp : response.logprobs()) {
    out.loops.push_back(lp.loops());
  }
  out.mean_loops = response.usage().mean_loops();
  return out;
}

std::vector<int32_t> Ids(const nlohmann::json& array) {
  return array.get<std::vector<int32_t>>();
}

// Threshold 1 (full depth): depth-wise and sequence-wise batching give the
// tokens of tools/recursive/model.py (reference.json, float64), and every
// token reports all of the model's loops.
TEST(RecursiveServingTest, FullDepthMatchesReferenceInBothBatchingModes) {
  const nlohmann::json reference = ReadJson(FixtureDir() + "/reference.json");
  const std::vector<int32_t> prompt = Ids(reference["prompt_ids"]);
  const std::vector<int32_t> expected = Ids(reference["generated_ids"]);
  for (const char* mode : {"depthwise", "sequencewise"}) {
    SCOPED_TRACE(mode);
    auto daemon = StratadDaemon::Start(
        FixtureDir(), {absl::StrCat("--loop_batching=", mode)});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    absl::StatusOr<Output> out =
        Complete(**daemon, prompt, static_cast<uint32_t>(expected.size()));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->ids, expected);
    EXPECT_EQ(out->loops, std::vector<uint32_t>(expected.size(), 3));
    EXPECT_DOUBLE_EQ(out->mean_loops, 3.0);
  }
}

// The forced-exit fixture's threshold run (threshold 0.6, max_prob,
// propagate): the daemon's exit loops and tokens are the reference's.
TEST(RecursiveServingTest, ThresholdRunMatchesReferenceExits) {
  const nlohmann::json fixture = ReadJson(FixtureDir() + "/forced_exits.json");
  const nlohmann::json& run = fixture["threshold_run"];
  ASSERT_EQ(run["kv_policy"], "propagate");
  ASSERT_EQ(run["confidence"], "max_prob");
  const std::vector<int32_t> prompt = Ids(fixture["prompt_ids"]);
  const std::vector<int32_t> expected = Ids(run["generated_ids"]);
  // The first token comes from the prompt (every loop); decode step s
  // samples token s from its exit loop.
  std::vector<uint32_t> expected_loops = {3};
  for (const auto& step : run["steps"]) {
    expected_loops.push_back(step["exit_loop"].get<uint32_t>() + 1);
  }
  ASSERT_EQ(expected_loops.size(), expected.size());
  // The reference runs its prompt at full depth (prompt exits off).
  auto daemon = StratadDaemon::Start(FixtureDir(), {"--prompt_exits=false"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<Output> out =
      Complete(**daemon, prompt, static_cast<uint32_t>(expected.size()),
               run["threshold"].get<float>(), run["min_loops"].get<uint32_t>());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->ids, expected);
  EXPECT_EQ(out->loops, expected_loops);
}

// Depth-wise batching mixes requests at different loops in one step (and,
// with exits, refills freed slots at once): each of 8 concurrent requests
// gets exactly what it gets alone, for both KV fill policies. Every other
// request asks for full depth: alone it runs whole passes, together it runs
// one loop a step beside the others that may exit, and whole passes again
// once they have ended. The exit metrics count what the responses report.
TEST(RecursiveServingTest, ConcurrentRequestsEqualSoloWithExits) {
  for (const char* policy : {"propagate", "recompute"}) {
    SCOPED_TRACE(policy);
    const int metrics_port = strata::testing::FreePort();
    ASSERT_GT(metrics_port, 0);
    auto daemon = StratadDaemon::Start(
        BundledDir(), {absl::StrCat("--kv_fill=", policy),
                       absl::StrCat("--metrics_port=", metrics_port)});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 8; ++i) {
      std::vector<int32_t> prompt = {4096};  // BOS, then varied lengths
      for (int j = 0; j < 5 + 3 * i; ++j) prompt.push_back(100 + 37 * i + j);
      prompts.push_back(prompt);
    }
    std::vector<Output> solo;
    int64_t early = 0;
    auto threshold = [](size_t i) { return i % 2 == 0 ? 0.6f : 1.0f; };
    for (size_t i = 0; i < prompts.size(); ++i) {
      absl::StatusOr<Output> out =
          Complete(**daemon, prompts[i], 24, threshold(i));
      ASSERT_TRUE(out.ok()) << out.status();
      for (uint32_t loops : out->loops) early += loops < 3 ? 1 : 0;
      solo.push_back(*out);
    }
    EXPECT_GT(early, 0) << "threshold 0.6 should let some tokens exit";
    std::vector<absl::StatusOr<Output>> together(prompts.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < prompts.size(); ++i) {
      threads.emplace_back([&, i] {
        together[i] = Complete(**daemon, prompts[i], 24, threshold(i));
      });
    }
    for (auto& thread : threads) thread.join();
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_TRUE(together[i].ok()) << together[i].status();
      EXPECT_EQ(together[i]->ids, solo[i].ids) << "request " << i;
      EXPECT_EQ(together[i]->loops, solo[i].loops) << "request " << i;
      double sum = 0;
      for (uint32_t loops : solo[i].loops) sum += loops;
      EXPECT_NEAR(solo[i].mean_loops, sum / solo[i].loops.size(), 1e-9);
    }
    const std::string metrics = strata::testing::HttpBody(
        strata::testing::HttpGet(metrics_port, "/metrics"));
    EXPECT_EQ(strata::testing::PrometheusValue(
                  metrics, absl::StrCat("strata_kv_fill_tokens_total{policy=\"",
                                        policy, "\"}")),
              2 * early);
    EXPECT_EQ(strata::testing::PrometheusValue(
                  metrics, "strata_generated_token_loops_count"),
              2 * 8 * 24);
    EXPECT_EQ(strata::testing::PrometheusValue(
                  metrics, "strata_generated_token_loops_bucket{le=\"2\"}"),
              2 * early);
  }
}

// --prompt_exits (on by default): prompt tokens stop at their own exit
// loops too (the bundled model's calibrated classifier). A token's loops
// depend on its own hidden state only, so each request gets the same tokens
// and loops alone, beside others, and under either batching mode, although
// its prompt goes token by token beside other requests' per-loop steps or
// whole passes. The prompt exits are counted apart from the generated ones.
TEST(RecursiveServingTest,
     PromptExitsGiveTheSameTokensAloneTogetherAndInBothModes) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> prompt = {4096};
    for (int j = 0; j < 8 + 6 * i; ++j) prompt.push_back(200 + 41 * i + j);
    prompts.push_back(prompt);
  }
  std::vector<Output> first_mode;
  for (const char* mode : {"depthwise", "sequencewise"}) {
    SCOPED_TRACE(mode);
    const int metrics_port = strata::testing::FreePort();
    ASSERT_GT(metrics_port, 0);
    // stratad's default (--prompt_exits on).
    auto daemon = StratadDaemon::Start(
        BundledDir(), {absl::StrCat("--loop_batching=", mode),
                       absl::StrCat("--metrics_port=", metrics_port)});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    std::vector<Output> solo;
    for (const auto& prompt : prompts) {
      absl::StatusOr<Output> out = Complete(**daemon, prompt, 12);
      ASSERT_TRUE(out.ok()) << out.status();
      solo.push_back(*out);
    }
    const std::string metrics = strata::testing::HttpBody(
        strata::testing::HttpGet(metrics_port, "/metrics"));
    const double prompt_exits = strata::testing::PrometheusValue(
        metrics, "strata_prompt_exit_tokens_total");
    EXPECT_GT(prompt_exits, 0);
    std::vector<absl::StatusOr<Output>> together(prompts.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < prompts.size(); ++i) {
      threads.emplace_back(
          [&, i] { together[i] = Complete(**daemon, prompts[i], 12); });
    }
    for (auto& thread : threads) thread.join();
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_TRUE(together[i].ok()) << together[i].status();
      EXPECT_EQ(together[i]->ids, solo[i].ids) << "request " << i;
      EXPECT_EQ(together[i]->loops, solo[i].loops) << "request " << i;
      if (!first_mode.empty()) {
        EXPECT_EQ(solo[i].ids, first_mode[i].ids) << "request " << i;
        EXPECT_EQ(solo[i].loops, first_mode[i].loops) << "request " << i;
      }
    }
    // The same prompts again: their full blocks come from the prefix cache,
    // cached under the exit rule they were computed with; the rest of each
    // prompt exits again.
    const std::string after = strata::testing::HttpBody(
        strata::testing::HttpGet(metrics_port, "/metrics"));
    EXPECT_GT(strata::testing::PrometheusValue(
                  after, "strata_prefix_cache_hit_tokens_total"),
              0);
    const double again = strata::testing::PrometheusValue(
                             after, "strata_prompt_exit_tokens_total") -
                         prompt_exits;
    EXPECT_GT(again, 0);
    EXPECT_LT(again, prompt_exits);
    if (first_mode.empty()) first_mode = solo;
  }
}

// The hidden-state measures end to end: the daemon's exits and tokens for
// the reference's saturation and classifier runs (hidden_exits.json, on the
// fixture with its classifier named in config.json), both batching modes.
TEST(RecursiveServingTest, HiddenMeasureRunsMatchReference) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) /
                       absl::StrCat("strata_serving_classifier_", getpid());
  fs::remove_all(dir);
  fs::copy(FixtureDir(), dir, fs::copy_options::recursive);
  nlohmann::json config = ReadJson((dir / "config.json").string());
  config["exit_classifier"] = {{"file", "exit_classifier_fixture.safetensors"}};
  std::ofstream(dir / "config.json") << config.dump(1);
  const nlohmann::json fixture = ReadJson(FixtureDir() + "/hidden_exits.json");
  const std::vector<int32_t> prompt = Ids(fixture["prompt_ids"]);
  for (const char* mode : {"depthwise", "sequencewise"}) {
    // The reference runs its prompt at full depth (prompt exits off).
    auto daemon = StratadDaemon::Start(
        dir.string(),
        {absl::StrCat("--loop_batching=", mode), "--prompt_exits=false"});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    for (const auto& [name, kind] :
         {std::pair{"saturation", v1::EXIT_CONFIDENCE_SATURATION},
          std::pair{"classifier", v1::EXIT_CONFIDENCE_CLASSIFIER}}) {
      SCOPED_TRACE(absl::StrCat(mode, " ", name));
      const nlohmann::json& run = fixture["runs"][name];
      const std::vector<int32_t> expected = Ids(run["generated_ids"]);
      std::vector<uint32_t> expected_loops = {3};
      for (const auto& step : run["steps"]) {
        expected_loops.push_back(step["exit_loop"].get<uint32_t>() + 1);
      }
      absl::StatusOr<Output> out =
          Complete(**daemon, prompt, static_cast<uint32_t>(expected.size()),
                   run["threshold"].get<float>(), 0, kind);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(out->ids, expected);
      EXPECT_EQ(out->loops, expected_loops);
    }
  }
  fs::remove_all(dir);
}

// The bundled model ships a classifier and calibrated thresholds: a request
// that sets no exit fields uses both (the same tokens and loops as asking
// for them explicitly, with early exits), and threshold 1 is full depth.
TEST(RecursiveServingTest, BundledModelDefaultsToCalibratedClassifier) {
  const nlohmann::json config = ReadJson(BundledDir() + "/config.json");
  ASSERT_TRUE(config.contains("exit_classifier"));
  const float threshold = config["exit_thresholds"]["classifier"].get<float>();
  ASSERT_LT(threshold, 1.0f);
  auto daemon = StratadDaemon::Start(BundledDir());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::vector<int32_t> prompt = {4096, 400, 401, 402, 403, 404};
  absl::StatusOr<Output> defaults = Complete(**daemon, prompt, 32);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  absl::StatusOr<Output> explicit_fields = Complete(
      **daemon, prompt, 32, threshold, 0, v1::EXIT_CONFIDENCE_CLASSIFIER);
  ASSERT_TRUE(explicit_fields.ok()) << explicit_fields.status();
  EXPECT_EQ(defaults->ids, explicit_fields->ids);
  EXPECT_EQ(defaults->loops, explicit_fields->loops);
  EXPECT_LT(defaults->mean_loops, 3.0);
  absl::StatusOr<Output> full = Complete(**daemon, prompt, 32, 1.0f);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_DOUBLE_EQ(full->mean_loops, 3.0);
}

TEST(RecursiveServingTest, ExitFieldsAreValidated) {
  auto recursive = StratadDaemon::Start(FixtureDir());
  ASSERT_TRUE(recursive.ok()) << recursive.status();
  absl::StatusOr<Output> out = Complete(**recursive, {1792, 79}, 4, 1.5f);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("sampling.exit_threshold"));
  out = Complete(**recursive, {1792, 79}, 4, 0.5f, /*min_loops=*/4);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("sampling.exit_min_loops"));
  // The fixture has no exit classifier.
  out = Complete(**recursive, {1792, 79}, 4, 0.5f, 0,
                 v1::EXIT_CONFIDENCE_CLASSIFIER);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("sampling.exit_confidence"));

  auto plain = StratadDaemon::Start(strata::testing::TinyLlamaDir());
  ASSERT_TRUE(plain.ok()) << plain.status();
  out = Complete(**plain, {1792, 79}, 4, 0.5f);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("sampling.exit_threshold"));
  // A plain model reports one loop per token.
  out = Complete(**plain, {1792, 79}, 4);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->loops, std::vector<uint32_t>(4, 1));
}

}  // namespace
}  // namespace strata
