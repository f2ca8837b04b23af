// strata-perplexity: the quality of a weight mode as the engine serves it.
// For each --modes entry (a --quantization value on the CPU backend, with
// "/gN" for --int8_group_size=N, e.g. int8/g128; or "bf16" for --dtype=bf16)
// it
// runs the held-out text through the engine (ModelRunner) and reports,
// side by side with the first mode (the logits of every position come from
// ModelRunnerTestPeer::ComputeAllLogits, the tests' window into the runner:
// a measurement tool, not a serving path):
//
//  * perplexity exp(mean NLL) over --windows non-overlapping windows of
//    --window_len tokens spread evenly over the text (BOS first when the
//    tokenizer adds one; window_len - 1 tokens scored per window), and its
//    ratio to the first mode's;
//  * teacher-forced top-1 agreement with the first mode (same argmax at
//    each scored position);
//  * greedy agreement: the first --prompt_len tokens of each window are a
//    prompt, --gen_tokens tokens are generated greedily (each step one full
//    prefill of prompt + output, the argmax of its last row, lowest id on a
//    tie), and compared with the first mode's: prefix agreement (tokens
//    equal until the first divergence / all) and position-wise agreement.
//
// Usage: build/bin/strata-perplexity --model=DIR --text=FILE
//            [--modes=none,int8,int8/g128] [--windows=16] [--window_len=128]
//            [--prompt_len=16] [--gen_tokens=32] [--threads=0]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/backends/backend_options.h"
#include "engine/model_runner.h"
#include "engine/step.h"
#include "tests/engine/testing/model_runner_test_peer.h"
#include "text/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model directory.");
ABSL_FLAG(std::string, text, "", "Held-out text file.");
ABSL_FLAG(std::string, modes, "none,int8",
          "Comma-separated --quantization values or bf16 (--dtype=bf16); "
          "the first is the baseline.");
ABSL_FLAG(int32_t, windows, 16, "Windows scored.");
ABSL_FLAG(int32_t, window_len, 128, "Tokens per window.");
ABSL_FLAG(int32_t, prompt_len, 16, "Greedy prompts: tokens per prompt.");
ABSL_FLAG(int32_t, gen_tokens, 32, "Greedy prompts: tokens generated.");
ABSL_FLAG(int32_t, threads, 0, "Kernel threads; 0 = one per core.");

namespace strata {
namespace {

struct ModeResult {
  double nll = 0;
  int64_t scored = 0;
  std::vector<int32_t> argmax;               // per scored position
  std::vector<std::vector<TokenId>> greedy;  // per prompt
};

int32_t Argmax(const std::vector<float>& row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) -
                              row.begin());
}

absl::StatusOr<std::vector<std::vector<float>>> Logits(
    ModelRunner& runner, const std::vector<TokenId>& tokens) {
  std::vector<int32_t> table((tokens.size() + runner.block_size() - 1) /
                             runner.block_size());
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  StepPlan plan;
  WorkItem& item = plan.items.emplace_back();
  item.tokens = tokens;
  item.block_table = table;
  return ModelRunnerTestPeer(runner).ComputeAllLogits(plan);
}

absl::StatusOr<ModeResult> RunMode(
    const std::string& mode, const std::vector<std::vector<TokenId>>& windows) {
  // "bf16" is --dtype=bf16 (bf16 weights x bf16 activations); the rest
  // are --quantization values, "/gN" adding --int8_group_size=N.
  std::string quantization = mode == "bf16" ? "none" : mode;
  int32_t group_size = 0;
  if (const size_t slash = quantization.find("/g");
      slash != std::string::npos) {
    if (!absl::SimpleAtoi(quantization.substr(slash + 2), &group_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--modes: bad group size in '", mode, "'"));
    }
    quantization.resize(slash);
  }
  absl::StatusOr<BackendOptions> backend =
      ParseBackendOptions("cpu", mode == "bf16" ? "bf16" : "", quantization);
  if (!backend.ok()) return backend.status();
  backend->int8_group_size = group_size;
  ModelRunner::Options options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.backend = *backend;
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.kv_cache_bytes = 64LL << 20;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  if (!runner.ok()) return runner.status();
  ModeResult result;
  for (const std::vector<TokenId>& w : windows) {
    absl::StatusOr<std::vector<std::vector<float>>> logits =
        Logits(**runner, w);
    if (!logits.ok()) return logits.status();
    for (size_t t = 0; t + 1 < w.size(); ++t) {
      const std::vector<float>& row = (*logits)[t];
      const float mx = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (float v : row) sum += std::exp(static_cast<double>(v) - mx);
      result.nll += std::log(sum) + mx - row[w[t + 1]];
      ++result.scored;
      result.argmax.push_back(Argmax(row));
    }
    std::vector<TokenId> seq(
        w.begin(), w.begin() + std::min<size_t>(
                                   w.size(), absl::GetFlag(FLAGS_prompt_len)));
    const size_t prompt = seq.size();
    for (int32_t g = 0; g < absl::GetFlag(FLAGS_gen_tokens); ++g) {
      absl::StatusOr<std::vector<std::vector<float>>> l = Logits(**runner, seq);
      if (!l.ok()) return l.status();
      seq.push_back(Argmax(l->back()));
    }
    result.greedy.emplace_back(seq.begin() + prompt, seq.end());
  }
  return result;
}

int Run() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(absl::GetFlag(FLAGS_model));
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::ifstream in(absl::GetFlag(FLAGS_text));
  if (!in) {
    std::fprintf(stderr, "cannot read --text\n");
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<TokenId>> ids =
      (*tokenizer)->Encode(text.str(), /*add_special_tokens=*/false);
  if (!ids.ok()) {
    std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
    return 1;
  }
  const bool bos =
      (*tokenizer)->add_bos_token() && (*tokenizer)->bos_token_id().has_value();
  const int64_t len = absl::GetFlag(FLAGS_window_len) - (bos ? 1 : 0);
  const int64_t count = absl::GetFlag(FLAGS_windows);
  if (len < 2 || count < 1 || count * len > static_cast<int64_t>(ids->size())) {
    std::fprintf(stderr, "the text has %zu tokens: too few for the windows\n",
                 ids->size());
    return 1;
  }
  const int64_t stride = static_cast<int64_t>(ids->size()) / count;
  std::vector<std::vector<TokenId>> windows;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<TokenId>& w = windows.emplace_back();
    if (bos) w.push_back(*(*tokenizer)->bos_token_id());
    w.insert(w.end(), ids->begin() + i * stride,
             ids->begin() + i * stride + len);
  }
  const std::vector<std::string> modes =
      absl::StrSplit(absl::GetFlag(FLAGS_modes), ',');
  std::vector<ModeResult> results;
  for (const std::string& mode : modes) {
    absl::StatusOr<ModeResult> r = RunMode(mode, windows);
    if (!r.ok()) {
      std::fprintf(stderr, "%s: %s\n", mode.c_str(),
                   r.status().ToString().c_str());
      return 1;
    }
    results.push_back(*std::move(r));
  }
  std::printf("%s: %lld windows x %lld tokens, greedy %d+%d\n",
              absl::GetFlag(FLAGS_model).c_str(), static_cast<long long>(count),
              static_cast<long long>(absl::GetFlag(FLAGS_window_len)),
              absl::GetFlag(FLAGS_prompt_len), absl::GetFlag(FLAGS_gen_tokens));
  std::printf("%-14s %11s %8s %10s %14s %14s\n", "mode", "perplexity", "ratio",
              "top1 agr", "greedy prefix", "greedy pos");
  const ModeResult& base = results[0];
  const double base_ppl = std::exp(base.nll / base.scored);
  for (size_t m = 0; m < modes.size(); ++m) {
    const ModeResult& r = results[m];
    const double ppl = std::exp(r.nll / r.scored);
    int64_t top1 = 0, prefix = 0, pos = 0, total = 0;
    for (size_t i = 0; i < r.argmax.size(); ++i) {
      top1 += r.argmax[i] == base.argmax[i];
    }
    for (size_t p = 0; p < r.greedy.size(); ++p) {
      bool same = true;
      for (size_t t = 0; t < r.greedy[p].size(); ++t) {
        same = same && r.greedy[p][t] == base.greedy[p][t];
        prefix += same;
        pos += r.greedy[p][t] == base.greedy[p][t];
        ++total;
      }
    }
    std::printf("%-14s %11.4f %7.4fx %9.2f%% %13.2f%% %13.2f%%\n",
                modes[m].c_str(), ppl, ppl / base_ppl,
                100.0 * top1 / static_cast<double>(r.argmax.size()),
                100.0 * prefix / std::max<double>(1, total),
                100.0 * pos / std::max<double>(1, total));
  }
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return strata::Run();
}
