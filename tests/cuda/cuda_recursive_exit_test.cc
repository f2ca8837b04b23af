// Early exits of the recursive models/strata-recursive-tiny on the CUDA
// backend against the CPU backend, step by step, the way the scheduler
// drives them (docs/engine.md, "Recursive forward"):
//   * the exit measures on the device: max_prob and margin from the exit
//     logits (kernels/cuda/exit_confidence.cu), the classifier from the
//     rows' hidden states;
//   * the exit logits a token is sampled from (the LM head of the rows that
//     exit, taken once per step at its end);
//   * the K/V of the loops an exited token skipped. Propagate: written by a
//     host task after a step of several items, or merged into the next
//     step's first round for a lone sequence. Recompute: kv_fill items.
// Exits are forced at a loop chosen per token (ExitParams::forced_exit_loop),
// so both backends exit the same rows whatever their rounding, and the
// confidences they report are compared as numbers. A wrong or missing K/V
// at a skipped loop shows in the logits of every later token, which attends
// to it at that loop. Both runners are fed the CPU's greedy tokens.
// Tolerances: the f16 model tolerance of cuda_model_test.cc (3e-2 of the
// largest logit) for logits; 0.1 absolute for a confidence in [0, 1] (a
// softmax probability moves with the exponent of the logits' error, and the
// two runners round differently: bf16 panels against f16 weights).
// Skips without a device.
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/exit_policy.h"
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
using testing_cuda::RelativeMaxError;

constexpr double kLogitTolerance = 3e-2;
constexpr double kConfidenceTolerance = 0.1;
constexpr size_t kTokens = 9;  // decoded per sequence

enum class Drive {
  kDepthWise,  // three staggered sequences, one loop per step
  kLone,       // one sequence, whole passes with its exits inside the step
};

struct Seq {
  RequestId id = 0;
  int start_step = 0;
  std::vector<TokenId> prompt;
  std::vector<int32_t> table;
  std::vector<TokenId> next, out;
  int32_t position = 0, loops_done = 0;
  ExitParams exit;     // this token's
  bool exits = false;  // whether this token has exit params
  // A recompute fill owed: the exited token, its position, its first
  // skipped loop.
  bool fill_pending = false;
  TokenId fill_token = 0;
  int32_t fill_position = 0, fill_loop = 0;
};

// Token t of a sequence exits after loop (t + id) % 3 when that is below the
// last loop (forced), else runs at full depth without exit params; the
// measure cycles over the three a token can be forced with.
void ChooseExit(Seq& s, int32_t loops) {
  const int32_t t = static_cast<int32_t>(s.out.size());
  const int32_t loop = static_cast<int32_t>((t + s.id) % 3);
  s.exits = loop < loops - 1;
  if (!s.exits) return;
  constexpr std::array<ExitConfidence, 3> kKinds = {ExitConfidence::kClassifier,
                                                    ExitConfidence::kMaxProb,
                                                    ExitConfidence::kMargin};
  s.exit = ExitParams{};
  s.exit.confidence = kKinds[(t + 2 * s.id) % 3];
  s.exit.forced_exit_loop = loop;
}

struct Tally {
  int sampled = 0, agree = 0, early = 0, confidences = 0, mixed_steps = 0;
  int fills = 0;
};

// Runs `drive` on both runners; every step's results must agree.
void RunBoth(ModelRunner& cpu, ModelRunner& gpu, Drive drive, Tally* tally) {
  const int32_t loops = cpu.config().num_loops;
  std::vector<Seq> seqs(drive == Drive::kLone ? 1 : 3);
  const std::vector<std::vector<TokenId>> prompts = {
      {4096, 512, 77, 1023, 9, 300, 41},
      {4096, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22},
      {4096, 2000, 5}};
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = seqs[i];
    s.id = static_cast<RequestId>(i + 1);
    s.start_step = static_cast<int>(i);
    s.prompt = prompts[i];
    s.next = s.prompt;
    for (int32_t b = 0; b < 4; ++b) {
      s.table.push_back(static_cast<int32_t>(4 * i) + b);
    }
  }
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  for (int step = 0; step < 300; ++step) {
    StepPlan plan;
    std::vector<Seq*> in_plan;  // the sampling-capable item of each
    std::vector<size_t> index;  // its index in plan.items
    std::vector<std::vector<TokenId>> fill_tokens(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      Seq& s = seqs[i];
      if (s.start_step > step || s.out.size() >= kTokens) continue;
      const bool decoding = !s.out.empty();
      if (s.fill_pending && s.loops_done == 0) {
        // The fill of the last exit runs before (in the same step as) the
        // next token reaches the loops it skipped.
        fill_tokens[i] = {s.fill_token};
        WorkItem f;
        f.request_id = s.id;
        f.tokens = fill_tokens[i];
        f.start_position = s.fill_position;
        f.block_table = s.table;
        f.loop_begin = s.fill_loop;
        f.kv_fill = true;
        plan.items.push_back(f);
        s.fill_pending = false;
        ++tally->fills;
      }
      if (decoding && s.loops_done == 0) ChooseExit(s, loops);
      WorkItem item;
      item.request_id = s.id;
      item.tokens = s.next;
      item.start_position = s.position;
      item.block_table = s.table;
      item.loop_begin = s.loops_done;
      item.loop_end = drive == Drive::kLone ? -1 : s.loops_done + 1;
      item.sampling = &greedy;
      item.prompt_tokens = s.prompt;
      item.output_tokens = s.out;
      if (decoding && s.exits) {
        item.sample = true;
        item.exit = &s.exit;
      } else {
        item.sample = item.loop_end == -1 || item.loop_end == loops;
      }
      index.push_back(plan.items.size());
      plan.items.push_back(item);
      in_plan.push_back(&s);
    }
    if (plan.items.empty()) break;
    bool mixed = false;
    for (const WorkItem& item : plan.items) {
      mixed |= item.loop_begin != plan.items[0].loop_begin;
    }
    tally->mixed_steps += mixed;
    std::vector<std::vector<float>> lc, lg;
    absl::StatusOr<StepResult> rc =
        ModelRunnerTestPeer(cpu).ExecuteWithLogits(plan, &lc);
    absl::StatusOr<StepResult> rg =
        ModelRunnerTestPeer(gpu).ExecuteWithLogits(plan, &lg);
    ASSERT_TRUE(rc.ok()) << rc.status();
    ASSERT_TRUE(rg.ok()) << rg.status();
    for (size_t j = 0; j < in_plan.size(); ++j) {
      Seq& s = *in_plan[j];
      const size_t i = index[j];
      const ItemResult& c = rc->items[i];
      const ItemResult& g = rg->items[i];
      const std::string where = "request " + std::to_string(s.id) + " token " +
                                std::to_string(s.out.size()) + " step " +
                                std::to_string(step);
      ASSERT_EQ(g.loops_done, c.loops_done) << where;
      ASSERT_EQ(g.exit_loop, c.exit_loop) << where;
      ASSERT_EQ(g.sampled.has_value(), c.sampled.has_value()) << where;
      ASSERT_EQ(g.needs_kv_fill, c.needs_kv_fill) << where;
      ASSERT_EQ(g.exit_confidence.has_value(), c.exit_confidence.has_value())
          << where;
      if (c.exit_confidence.has_value()) {
        ++tally->confidences;
        EXPECT_NEAR(*g.exit_confidence, *c.exit_confidence,
                    kConfidenceTolerance)
            << where << " " << ExitConfidenceName(s.exit.confidence);
      }
      if (!c.sampled.has_value()) {
        s.loops_done = c.loops_done;
        continue;
      }
      ++tally->sampled;
      EXPECT_LT(RelativeMaxError(lg[i], lc[i]), kLogitTolerance) << where;
      tally->agree += ArgMax(lg[i]) == ArgMax(lc[i]);
      if (c.exit_loop >= 0 && c.exit_loop < loops - 1) {
        ++tally->early;
        EXPECT_EQ(c.exit_loop, s.exit.forced_exit_loop) << where;
      }
      if (c.needs_kv_fill) {
        s.fill_pending = true;
        s.fill_token = s.next[0];
        s.fill_position = s.position;
        s.fill_loop = c.exit_loop + 1;
      }
      s.out.push_back(c.sampled->token);
      s.position += static_cast<int32_t>(s.next.size());
      s.next = {s.out.back()};
      s.loops_done = 0;
    }
  }
  for (const Seq& s : seqs) {
    EXPECT_EQ(s.out.size(), kTokens) << "request " << s.id;
    cpu.ReleaseState(s.id);
    gpu.ReleaseState(s.id);
  }
  EXPECT_EQ(gpu.num_kept_states(), 0u);
}

struct ExitCase {
  Drive drive;
  KvFillPolicy policy;
};

class CudaRecursiveExitTest : public testing::TestWithParam<ExitCase> {};

TEST_P(CudaRecursiveExitTest, ForcedExitsMatchCpu) {
  std::string why;
  if (testing_cuda::MakeCuda(&why) == nullptr) {
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  const ExitCase c = GetParam();
  const std::string model = "strata-recursive-tiny";
  std::unique_ptr<ModelRunner> cpu =
      MakeRunner("cpu", "", "none", model, false, c.policy);
  std::unique_ptr<ModelRunner> gpu =
      MakeRunner("cuda", "f16", "none", model, false, c.policy);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  ASSERT_EQ(cpu->config().num_loops, 3);  // ChooseExit's pattern
  Tally tally;
  RunBoth(*cpu, *gpu, c.drive, &tally);
  const int seqs = c.drive == Drive::kLone ? 1 : 3;
  EXPECT_EQ(tally.sampled, static_cast<int>(kTokens) * seqs);
  // Two of every three decode tokens exit early (the first token comes
  // from the prompt), each with a confidence; all but a few agree.
  EXPECT_GE(tally.early, (static_cast<int>(kTokens) - 1) * seqs / 2);
  EXPECT_GE(tally.confidences, tally.early);
  EXPECT_GE(tally.agree, tally.sampled - 2);
  if (c.drive == Drive::kDepthWise) {
    EXPECT_GE(tally.mixed_steps, 10);
  }
  if (c.policy == KvFillPolicy::kRecompute) {
    EXPECT_GE(tally.fills, tally.early - seqs);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Drives, CudaRecursiveExitTest,
    testing::Values(ExitCase{Drive::kDepthWise, KvFillPolicy::kPropagate},
                    ExitCase{Drive::kLone, KvFillPolicy::kPropagate},
                    ExitCase{Drive::kDepthWise, KvFillPolicy::kRecompute},
                    ExitCase{Drive::kLone, KvFillPolicy::kRecompute}),
    [](const testing::TestParamInfo<ExitCase>& info) {
      return std::string(info.param.drive == Drive::kLone ? "Lone"
                                                          : "DepthWise") +
             (info.param.policy == KvFillPolicy::kPropagate ? "Propagate"
                                                            : "Recompute");
    });

}  // namespace
}  // namespace strata
