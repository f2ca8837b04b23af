// Copy-on-write of KV blocks (StepPlan::block_copies): the backend op copies
// whole blocks of every cache tensor, and ModelRunner runs the copies before
// the forward pass, so a sequence continuing in a copied block computes
// exactly what it would in the original.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/model_runner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/testing/model_runner_test_peer.h"

namespace strata {
namespace {

TEST(CpuBackendTest, CopyKvBlocksCopiesWholeBlocksOfEveryCacheInOrder) {
  CpuBackend::Options backend_options;
  backend_options.num_threads = 1;
  auto backend = *CpuBackend::Create(backend_options);
  // Three caches of 5 blocks of [2, 4, 3] values; value = cache, block, i.
  constexpr int64_t kBlocks = 5, kPerBlock = 2 * 4 * 3;
  std::vector<Tensor> caches;
  std::vector<Tensor*> pointers;
  for (int c = 0; c < 3; ++c) {
    std::vector<float> host(kBlocks * kPerBlock);
    for (int64_t i = 0; i < static_cast<int64_t>(host.size()); ++i) {
      host[i] = static_cast<float>(c * 1000 + i);
    }
    caches.push_back(*backend->Upload(std::move(host), {kBlocks, 2, 4, 3}));
  }
  for (Tensor& t : caches) pointers.push_back(&t);
  // 1 -> 3, then 3 -> 0: in order, so block 0 ends up with block 1's data.
  const std::vector<BlockCopy> copies = {{1, 3}, {3, 0}, {2, 4}};
  backend->CopyKvBlocks(copies, pointers);
  for (int c = 0; c < 3; ++c) {
    std::vector<float> host(kBlocks * kPerBlock);
    ASSERT_TRUE(backend->CopyToHost(caches[c], std::span<float>(host)).ok());
    const int64_t from[kBlocks] = {1, 1, 2, 1, 2};  // source of each block
    for (int64_t b = 0; b < kBlocks; ++b) {
      for (int64_t i = 0; i < kPerBlock; ++i) {
        ASSERT_EQ(host[b * kPerBlock + i],
                  static_cast<float>(c * 1000 + from[b] * kPerBlock + i))
            << "cache " << c << " block " << b << " value " << i;
      }
    }
  }
}

std::unique_ptr<ModelRunner> TinyLlamaRunner() {
  ModelRunner::Options options;
  options.model_dir = std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-llama";
  options.kv_cache_bytes = 1 << 20;
  options.block_size = 4;
  options.backend.num_threads = 2;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? *std::move(runner) : nullptr;
}

// Logits of `tokens` at `start` through `table`, after `copies`.
std::vector<std::vector<float>> RunItem(ModelRunner& runner,
                                        std::span<const TokenId> tokens,
                                        int32_t start,
                                        std::span<const int32_t> table,
                                        std::vector<BlockCopy> copies = {}) {
  StepPlan plan;
  plan.block_copies = std::move(copies);
  WorkItem& item = plan.items.emplace_back();
  item.tokens = tokens;
  item.start_position = start;
  item.block_table = table;
  absl::StatusOr<std::vector<std::vector<float>>> logits =
      ModelRunnerTestPeer(runner).ComputeAllLogits(plan);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *std::move(logits) : std::vector<std::vector<float>>{};
}

// The fork of an n > 1 request: a prompt whose last token falls into a
// partly filled block continues in a copy of that block. Any layer's K or V
// missing from the copy would change the attention of every later position,
// so equal logits (bit for bit: the CPU kernels are batch invariant) show
// that every layer's K and V moved.
TEST(ModelRunnerBlockCopyTest, CopiedBlockContinuesExactlyLikeTheOriginal) {
  std::unique_ptr<ModelRunner> runner = TinyLlamaRunner();
  ASSERT_NE(runner, nullptr);
  const std::vector<TokenId> prompt = {1792, 79, 110, 313, 309, 640, 259, 847};
  // Positions 0..5 into blocks {3, 8}: block 8 holds positions 4 and 5.
  const std::vector<int32_t> table = {3, 8};
  RunItem(*runner, std::span(prompt).first(6), 0, table);

  // The copy first (block 8 -> 11), then positions 6 and 7 in the copy...
  const std::vector<int32_t> copied = {3, 11};
  const auto via_copy =
      RunItem(*runner, std::span(prompt).subspan(6), 6, copied, {{8, 11}});
  // ...equal positions 6 and 7 in the original block.
  const auto in_place =
      RunItem(*runner, std::span(prompt).subspan(6), 6, table);
  ASSERT_EQ(via_copy.size(), 2u);
  EXPECT_EQ(via_copy, in_place);

  // Control: a block that was never filled gives other logits, so the test
  // would see a copy that did not happen.
  const std::vector<int32_t> empty = {3, 20};
  const auto without = RunItem(*runner, std::span(prompt).subspan(6), 6, empty);
  EXPECT_NE(without, in_place);
}

TEST(ModelRunnerBlockCopyTest, BadCopiesAreRefusedBeforeAnythingRuns) {
  std::unique_ptr<ModelRunner> runner = TinyLlamaRunner();
  ASSERT_NE(runner, nullptr);
  const std::vector<TokenId> tokens = {1792, 79};
  const std::vector<int32_t> table = {0};
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  StepPlan plan;
  WorkItem& item = plan.items.emplace_back();
  item.tokens = tokens;
  item.block_table = table;
  item.sample = true;
  item.sampling = &greedy;
  for (const BlockCopy bad : {BlockCopy{runner->num_blocks(), 1},
                              BlockCopy{1, -1}, BlockCopy{2, 2}}) {
    plan.block_copies = {bad};
    const absl::Status status = runner->Execute(plan).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                testing::HasSubstr("block copy 0"));
  }
  plan.block_copies = {{1, 2}};
  absl::StatusOr<StepResult> result = runner->Execute(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->items[0].sampled.has_value());
}

}  // namespace
}  // namespace strata
