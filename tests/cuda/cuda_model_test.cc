// End to end on models/strata-tiny: the CUDA runner's logits against the CPU
// runner's (f32) for a prefill and 32 decode steps, for each weight format,
// feeding both the CPU's greedy tokens so the sequences stay identical; and
// the recursive models/strata-recursive-tiny run depth-wise. The int8 modes
// are also checked against the CPU in the same mode (the CPU's LLM.int8()
// is the reference of the CUDA one, issue 17), within the same tolerance.
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
#include "tests/cuda/cuda_runner_util.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/testing/model_runner_test_peer.h"

namespace strata {
namespace {

using testing_cuda::ArgMax;
using testing_cuda::MakeRunner;

struct Case {
  const char* dtype;
  const char* quantization;
  double tolerance;
  int min_greedy_agreement;  // of 33 steps
};

class CudaModelTest : public testing::TestWithParam<Case> {};

// The CUDA runner in mode c against the CPU runner with `cpu_quantization`
// (f32 compute): logits within c.tolerance at every step, and greedy
// agreement.
void ExpectLogitsMatchCpu(const Case& c, const std::string& cpu_quantization) {
  std::unique_ptr<ModelRunner> cpu = MakeRunner("cpu", "", cpu_quantization);
  std::unique_ptr<ModelRunner> gpu =
      MakeRunner("cuda", c.dtype, c.quantization);
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
        ModelRunnerTestPeer(*cpu).ComputeAllLogits(plan);
    absl::StatusOr<std::vector<std::vector<float>>> got =
        ModelRunnerTestPeer(*gpu).ComputeAllLogits(plan);
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

TEST_P(CudaModelTest, LogitsMatchCpuOverPrefillAndDecode) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  ExpectLogitsMatchCpu(GetParam(), "none");
}

// int8 and LLM.int8(): the CPU in the same mode. The CPU picks LLM.int8()'s
// outlier columns per row and quantizes activations per row (batch
// invariance); the CUDA path is weight-only int8 or picks outliers per
// batch, so they agree within the int8 error, not bit for bit.
TEST_P(CudaModelTest, QuantizedLogitsMatchCpuInTheSameMode) {
  const Case c = GetParam();
  if (std::string(c.quantization) == "none") GTEST_SKIP() << "not quantized";
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  ExpectLogitsMatchCpu(c, c.quantization);
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
  std::unique_ptr<ModelRunner> cpu = MakeRunner("cpu", "bf16", "none");
  std::unique_ptr<ModelRunner> gpu = MakeRunner("cuda", "f16", "none");
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

// The bundled recursive model (3 loops of 2 layers, LoRA rank 8) served
// depth-wise, one loop per step, with three requests started a step apart:
// every step mixes rows at different loops, so each projection's LoRA runs
// through the segmented kernel with several segments, and the KV of every
// (loop, layer). Both runners are fed the CPU's greedy tokens; the logits
// each token is sampled from must match within the f16 tolerance above.
TEST(CudaRecursiveModelTest, DepthWiseStaggeredLogitsMatchCpu) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  const std::string model = "strata-recursive-tiny";
  std::unique_ptr<ModelRunner> cpu = MakeRunner("cpu", "bf16", "none", model);
  std::unique_ptr<ModelRunner> gpu = MakeRunner("cuda", "f16", "none", model);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const int32_t loops = cpu->config().num_loops;
  ASSERT_GT(loops, 1);

  struct Seq {
    RequestId id;
    int start_step;
    std::vector<TokenId> prompt;
    std::vector<int32_t> table;
    std::vector<TokenId> next, out;
    int32_t position = 0, loops_done = 0;
  };
  std::vector<Seq> seqs = {
      {1, 0, {4096, 512, 77, 1023, 9, 300, 41}, {0, 1, 2, 3}, {}, {}},
      {2,
       1,
       {4096, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22},
       {4, 5, 6, 7},
       {},
       {}},
      {3, 2, {4096, 2000, 5}, {8, 9, 10, 11}, {}, {}}};
  for (Seq& s : seqs) s.next = s.prompt;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  constexpr size_t kTokens = 10;
  int sampled = 0, agree = 0, mixed_steps = 0;
  for (int step = 0; step < 200; ++step) {
    StepPlan plan;
    std::vector<Seq*> in_plan;
    for (Seq& s : seqs) {
      if (s.start_step > step || s.out.size() >= kTokens) continue;
      WorkItem item;
      item.request_id = s.id;
      item.tokens = s.next;
      item.start_position = s.position;
      item.block_table = s.table;
      item.loop_begin = s.loops_done;
      item.loop_end = s.loops_done + 1;
      item.sample = item.loop_end == loops;
      item.sampling = &greedy;
      item.prompt_tokens = s.prompt;
      item.output_tokens = s.out;
      plan.items.push_back(item);
      in_plan.push_back(&s);
    }
    if (plan.items.empty()) break;
    bool mixed = false;
    for (const WorkItem& item : plan.items) {
      mixed |= item.loop_begin != plan.items[0].loop_begin;
    }
    mixed_steps += mixed;
    std::vector<std::vector<float>> lc, lg;
    absl::StatusOr<StepResult> rc =
        ModelRunnerTestPeer(*cpu).ExecuteWithLogits(plan, &lc);
    absl::StatusOr<StepResult> rg =
        ModelRunnerTestPeer(*gpu).ExecuteWithLogits(plan, &lg);
    ASSERT_TRUE(rc.ok()) << rc.status();
    ASSERT_TRUE(rg.ok()) << rg.status();
    for (size_t i = 0; i < in_plan.size(); ++i) {
      Seq& s = *in_plan[i];
      const ItemResult& c = rc->items[i];
      const ItemResult& g = rg->items[i];
      ASSERT_EQ(g.loops_done, c.loops_done) << "step " << step;
      ASSERT_EQ(g.sampled.has_value(), c.sampled.has_value());
      if (!c.sampled.has_value()) {
        s.loops_done = c.loops_done;
        continue;
      }
      ++sampled;
      EXPECT_LT(testing_cuda::RelativeMaxError(lg[i], lc[i]), 3e-2)
          << "request " << s.id << " token " << s.out.size();
      agree += ArgMax(lg[i]) == ArgMax(lc[i]);
      s.out.push_back(c.sampled->token);
      s.position += static_cast<int32_t>(s.next.size());
      s.next = {s.out.back()};
      s.loops_done = 0;
    }
  }
  EXPECT_EQ(sampled, static_cast<int>(kTokens * seqs.size()));
  EXPECT_GE(mixed_steps, 10);  // the stagger kept loops mixed
  EXPECT_GE(agree, sampled - 3);
  EXPECT_EQ(gpu->num_kept_states(), 0u);
}

// Decode steps as CUDA graphs: three sequences decoded together for 40
// steps, their block tables growing from 1 to 4 blocks (strides 1, 2, 4),
// on two runners, one eager and one recording and replaying graphs. A replay
// launches the same kernels and GEMM algorithms on the same addresses, so
// the logits must be equal bit for bit; then the same through Execute
// (sampling on the device after a graph).
TEST(CudaStepGraphTest, ReplayEqualsEagerBitForBit) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  std::unique_ptr<ModelRunner> eager = MakeRunner("cuda", "f16", "none");
  std::unique_ptr<ModelRunner> graphs =
      MakeRunner("cuda", "f16", "none", "strata-tiny", /*cuda_graphs=*/true);
  ASSERT_NE(eager, nullptr);
  ASSERT_NE(graphs, nullptr);
  constexpr int32_t kBlock = 16;  // Runner's block size
  const std::vector<std::vector<TokenId>> prompts = {
      {1792, 5, 17, 300, 301}, {1792, 42, 43}, {1792, 9, 10, 11, 12, 13, 14}};
  const size_t num_seqs = prompts.size();
  std::vector<std::vector<int32_t>> tables(num_seqs);
  std::vector<int32_t> positions(num_seqs, 0);
  std::vector<TokenId> next(num_seqs);
  auto grow_tables = [&](int32_t extra) {
    for (size_t s = 0; s < num_seqs; ++s) {
      const size_t need = (positions[s] + extra + kBlock - 1) / kBlock;
      while (tables[s].size() < need) {
        tables[s].push_back(static_cast<int32_t>(s * 8 + tables[s].size()));
      }
    }
  };
  // Prefill each prompt (multi-token steps: never graphs).
  for (size_t s = 0; s < num_seqs; ++s) {
    tables[s] = {static_cast<int32_t>(s * 8)};
    StepPlan plan;
    WorkItem item;
    item.request_id = static_cast<RequestId>(s + 1);
    item.tokens = prompts[s];
    item.start_position = 0;
    item.block_table = tables[s];
    plan.items.push_back(item);
    auto a = ModelRunnerTestPeer(*eager).ComputeAllLogits(plan);
    auto b = ModelRunnerTestPeer(*graphs).ComputeAllLogits(plan);
    ASSERT_TRUE(a.ok() && b.ok());
    positions[s] = static_cast<int32_t>(prompts[s].size());
    next[s] = ArgMax(a->back());
  }
  // One decode step of every sequence (its next token at its position);
  // `tokens` holds the token spans the plan points into.
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  auto decode_plan = [&](bool sample,
                         std::vector<std::vector<TokenId>>* tokens) {
    grow_tables(1);
    StepPlan plan;
    tokens->assign(num_seqs, {});
    for (size_t s = 0; s < num_seqs; ++s) {
      (*tokens)[s] = {next[s]};
      WorkItem item;
      item.request_id = static_cast<RequestId>(s + 1);
      item.tokens = (*tokens)[s];
      item.start_position = positions[s];
      item.block_table = tables[s];
      item.sample = sample;
      item.sampling = &greedy;
      plan.items.push_back(item);
    }
    return plan;
  };
  for (int step = 0; step < 40; ++step) {
    std::vector<std::vector<TokenId>> tokens;
    const StepPlan plan = decode_plan(false, &tokens);
    auto a = ModelRunnerTestPeer(*eager).ComputeAllLogits(plan);
    auto b = ModelRunnerTestPeer(*graphs).ComputeAllLogits(plan);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(a->size(), num_seqs);
    for (size_t s = 0; s < num_seqs; ++s) {
      ASSERT_EQ((*a)[s], (*b)[s]) << "step " << step << " sequence " << s;
      next[s] = ArgMax((*a)[s]);
      ++positions[s];
    }
  }
  const CudaBackend::GraphStats stats =
      static_cast<CudaBackend&>(graphs->backend()).graph_stats();
  // Strides 1, 2, 4 over 40 steps: each key runs eagerly once, is captured
  // once, then replays.
  EXPECT_GE(stats.captures, 2);
  EXPECT_GE(stats.replays, 30);
  EXPECT_EQ(stats.aborted, 0);
  EXPECT_EQ(static_cast<CudaBackend&>(eager->backend()).graph_stats().captures,
            0);

  // Execute: greedy sampling on the device after a replayed graph.
  for (int step = 0; step < 8; ++step) {
    std::vector<std::vector<TokenId>> tokens;
    const StepPlan plan = decode_plan(true, &tokens);
    auto a = eager->Execute(plan);
    auto b = graphs->Execute(plan);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (size_t s = 0; s < num_seqs; ++s) {
      ASSERT_TRUE(a->items[s].sampled.has_value());
      ASSERT_TRUE(b->items[s].sampled.has_value());
      EXPECT_EQ(a->items[s].sampled->token, b->items[s].sampled->token);
      EXPECT_EQ(a->items[s].sampled->logprob, b->items[s].sampled->logprob);
      next[s] = a->items[s].sampled->token;
      ++positions[s];
    }
  }
  EXPECT_GT(static_cast<CudaBackend&>(graphs->backend()).graph_stats().replays,
            stats.replays);
}

}  // namespace
}  // namespace strata
