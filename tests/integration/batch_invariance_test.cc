// Batch invariance through the real daemon: the greedy outputs of 32
// concurrent requests (mixed lengths, shared prefixes, a KV pool small enough
// to force preemption) are, token for token, the outputs of the same requests
// run one at a time. This holds because every kernel reduces in an order
// fixed by the reduction length alone (docs/engine.md), prefix-cached K/V is
// bit-identical to recomputed K/V, and preemption recomputes exactly. The
// same holds with --quantization=int8 and llm.int8 (activations quantized
// per row, exact int32 sums; docs/engine.md).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::StallHook;
using ::strata::testing::StratadDaemon;

struct Case {
  std::vector<int32_t> prompt;
  uint32_t max_tokens = 0;
};

// 32 prompts: four 20-token shared prefixes (think system prompts) followed
// by 1-60 tokens of their own, and outputs of 30-60 tokens. Token ids stay
// below the tiny-llama special tokens.
std::vector<Case> MakeCases() {
  std::mt19937 rng(20261129);
  std::vector<std::vector<int32_t>> prefixes(4);
  for (auto& prefix : prefixes) {
    for (int i = 0; i < 20; ++i) prefix.push_back(rng() % 1792);
  }
  std::vector<Case> cases(32);
  for (size_t i = 0; i < cases.size(); ++i) {
    cases[i].prompt = prefixes[i % 4];
    const int own = 1 + rng() % 60;
    for (int j = 0; j < own; ++j) cases[i].prompt.push_back(rng() % 1792);
    cases[i].max_tokens = 30 + rng() % 31;
  }
  return cases;
}

absl::StatusOr<std::vector<int32_t>> Generate(grpc::Channel* channel,
                                              const Case& c) {
  auto stub = v1::Generation::NewStub(
      std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
  v1::CompletionRequest request;
  for (int32_t id : c.prompt) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(c.max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(120));
  v1::CompletionResponse response;
  const grpc::Status status = stub->Complete(&context, request, &response);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("rpc failed: ", status.error_message()));
  }
  return std::vector<int32_t>(response.token_ids().begin(),
                              response.token_ids().end());
}

// The daemon flags of a weight mode ("" = the default).
class BatchInvarianceTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::vector<std::string> Flags(std::vector<std::string> flags) const {
    for (absl::string_view flag :
         absl::StrSplit(GetParam(), ' ', absl::SkipEmpty())) {
      flags.emplace_back(flag);
    }
    return flags;
  }
};

TEST_P(BatchInvarianceTest, ConcurrentGreedyOutputsEqualSoloOutputs) {
  const std::vector<Case> cases = MakeCases();

  // One at a time, on a roomy pool.
  std::vector<std::vector<int32_t>> solo(cases.size());
  {
    auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                       Flags({"--max_num_seqs=1"}));
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    for (size_t i = 0; i < cases.size(); ++i) {
      auto tokens = Generate((*daemon)->channel().get(), cases[i]);
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      ASSERT_EQ(tokens->size(), cases[i].max_tokens);
      solo[i] = *tokens;
    }
  }

  // All 32 at once on a 1 MiB pool: 2048 tokens of tiny-llama K/V for about
  // 3000 tokens of demand, so the scheduler must preempt. "At once" is
  // forced: the engine is held (StallHook) until the metrics show all 32
  // queued, so they reach the scheduler together however slow the machine.
  StallHook stall;
  const int metrics_port = strata::testing::FreePort();
  ASSERT_GT(metrics_port, 0);
  auto daemon = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      Flags({"--kv_cache_mb=1", "--max_model_len=256", "--max_num_seqs=32",
             absl::StrCat("--metrics_port=", metrics_port)}));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  stall.Stall();
  std::vector<absl::StatusOr<std::vector<int32_t>>> together(
      cases.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] {
      together[i] = Generate((*daemon)->channel().get(), cases[i]);
    });
  }
  double waiting = 0;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(60);
       absl::Now() < give_up; absl::SleepFor(absl::Milliseconds(20))) {
    waiting = strata::testing::PrometheusValue(
        strata::testing::HttpBody(
            strata::testing::HttpGet(metrics_port, "/metrics")),
        "strata_requests_waiting");
    if (waiting == static_cast<double>(cases.size())) break;
  }
  EXPECT_EQ(waiting, static_cast<double>(cases.size()));
  stall.Release();
  for (auto& thread : threads) thread.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(together[i].ok())
        << "request " << i << ": " << together[i].status();
    EXPECT_EQ(*together[i], solo[i]) << "request " << i << " differs";
  }

  const std::string metrics = strata::testing::HttpBody(
      strata::testing::HttpGet(metrics_port, "/metrics"));
  EXPECT_GT(
      strata::testing::PrometheusValue(metrics, "strata_preemptions_total"), 0)
      << "the pool was meant to force preemption:\n"
      << metrics;
  EXPECT_GT(strata::testing::PrometheusValue(
                metrics, "strata_prefix_cache_hit_tokens_total"),
            0);
  EXPECT_TRUE((*daemon)->Alive());
}

INSTANTIATE_TEST_SUITE_P(
    WeightModes, BatchInvarianceTest,
    ::testing::Values("", "--quantization=int8", "--quantization=llm.int8",
                      "--quantization=int8 --int8_group_size=32"),
    [](const ::testing::TestParamInfo<std::string>& info) {
      if (info.param.empty()) return std::string("default");
      if (info.param == "--quantization=int8") return std::string("int8");
      if (info.param == "--quantization=llm.int8") {
        return std::string("llm_int8");
      }
      return std::string("int8_groups_of_32");
    });

}  // namespace
}  // namespace strata
