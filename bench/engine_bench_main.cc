// strata-engine-bench: decode throughput of the engine alone (ModelRunner:
// no scheduler, no gRPC) on a model directory. For a recursive model it
// compares, side by side in alternating rounds, sequence-wise steps (every
// loop of a token in one step) with depth-wise steps (one loop of every
// sequence per step, the hidden state kept between steps); for a plain model
// it times the plain steps. Every sequence samples greedily at full depth.
// Prints tokens/s per round and the mean ratio; on a shared machine read
// the ratio (docs/benchmarks.md).
//
// Usage: build/bin/strata-engine-bench --model=DIR [--sequences=32]
//            [--context=64] [--tokens=40] [--rounds=3] [--threads=0]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/model_runner.h"
#include "engine/step.h"

ABSL_FLAG(std::string, model, "models/strata-recursive-tiny",
          "Model directory.");
ABSL_FLAG(int32_t, sequences, 32, "Sequences decoded together.");
ABSL_FLAG(int32_t, context, 64, "Prompt tokens per sequence.");
ABSL_FLAG(int32_t, tokens, 40, "Decode tokens timed per round and mode.");
ABSL_FLAG(int32_t, rounds, 3, "Rounds (each mode once per round).");
ABSL_FLAG(int32_t, threads, 0, "Kernel threads; 0 = one per core.");

namespace strata {
namespace {

constexpr int32_t kBlockSize = 16;

int Main() {
  ModelRunner::Options options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.block_size = kBlockSize;
  const int32_t sequences = absl::GetFlag(FLAGS_sequences);
  const int32_t context = absl::GetFlag(FLAGS_context);
  const int32_t tokens = absl::GetFlag(FLAGS_tokens);
  const int32_t blocks_per_seq = (context + tokens) / kBlockSize + 1;
  options.kv_cache_bytes = 512LL << 20;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
    return 1;
  }
  ModelRunner& r = **runner;
  if (r.num_blocks() < sequences * blocks_per_seq) {
    std::fprintf(stderr, "KV pool too small for %d sequences\n", sequences);
    return 1;
  }
  const int32_t loops = r.config().num_loops;
  std::vector<std::vector<int32_t>> tables(sequences);
  for (int32_t s = 0; s < sequences; ++s) {
    for (int32_t b = 0; b < blocks_per_seq; ++b) {
      tables[s].push_back(s * blocks_per_seq + b);
    }
  }
  std::vector<TokenId> prompt(context);
  for (int32_t i = 0; i < context; ++i) {
    prompt[i] = (i * 37 + 11) % r.config().vocab_size;
  }
  for (int32_t s = 0; s < sequences; ++s) {  // prefill once, full depth
    StepPlan plan;
    WorkItem item;
    item.request_id = s + 1;
    item.tokens = prompt;
    item.block_table = tables[s];
    plan.items.push_back(item);
    if (absl::StatusOr<StepResult> done = r.Execute(plan); !done.ok()) {
      std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
      return 1;
    }
  }
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<TokenId> token = {11};
  // Decodes `tokens` positions after the prompt (the same positions every
  // round: the cache entries are overwritten), `loop_step` loops per step.
  auto decode = [&](int32_t loop_step) -> double {
    const auto start = std::chrono::steady_clock::now();
    for (int32_t t = 0; t < tokens; ++t) {
      for (int32_t begin = 0; begin < loops; begin += loop_step) {
        StepPlan plan;
        for (int32_t s = 0; s < sequences; ++s) {
          WorkItem item;
          item.request_id = s + 1;
          item.tokens = token;
          item.start_position = context + t;
          item.block_table = tables[s];
          item.loop_begin = begin;
          item.loop_end = loop_step == loops ? -1 : begin + loop_step;
          item.sample = begin + loop_step == loops;
          item.sampling = &greedy;
          plan.items.push_back(item);
        }
        if (absl::StatusOr<StepResult> done = r.Execute(plan); !done.ok()) {
          std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
          return -1.0;
        }
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return static_cast<double>(tokens) * sequences / seconds;
  };
  std::printf("%s: %d loop(s), %d sequences x %d tokens after %d, %s\n",
              options.model_dir.c_str(), loops, sequences, tokens, context,
              r.backend().Description().c_str());
  decode(loops);  // warm-up
  double ratio_sum = 0.0;
  const int32_t rounds = absl::GetFlag(FLAGS_rounds);
  for (int32_t round = 0; round < rounds; ++round) {
    const double seq = decode(loops);
    if (seq < 0) return 1;
    if (loops == 1) {
      std::printf("round %d: %.0f tok/s\n", round, seq);
      continue;
    }
    const double depth = decode(1);
    if (depth < 0) return 1;
    ratio_sum += depth / seq;
    std::printf(
        "round %d: sequence-wise %.0f tok/s, depth-wise %.0f tok/s "
        "(%.3fx)\n",
        round, seq, depth, depth / seq);
  }
  if (loops > 1 && rounds > 0) {
    std::printf("mean depth-wise / sequence-wise: %.3fx\n", ratio_sum / rounds);
  }
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return strata::Main();
}
