// What the load generator sends: one BenchRequest per request index, made
// deterministically from (seed, index) so that two runs (or two daemon
// configurations in bench/compare.sh) see exactly the same prompts.
//
// Kinds:
//   random         prompt of random token ids, input_len +- range_ratio;
//                  output_len +- range_ratio tokens (range_ratio 0: fixed).
//   shared_prefix  like random, but each prompt starts with one of
//                  num_prefixes "system prompts" of prefix_len tokens (the
//                  prefix cache's best case when num_prefixes is small).
//   dataset        prompts from a JSONL file: one object per line with either
//                  "prompt" (text, sent to CompleteStream) or "messages"
//                  ([{"role", "content"}...], sent to ChatStream), and
//                  "output_len" (target number of generated tokens).
//
// Token-id prompts control the prompt length exactly; output lengths are
// exact because the runner sets max_tokens = output_len and ignore_eos.
#ifndef STRATA_BENCH_WORKLOAD_H_
#define STRATA_BENCH_WORKLOAD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::bench {

enum class WorkloadKind { kRandom, kSharedPrefix, kDataset };

absl::StatusOr<WorkloadKind> ParseWorkloadKind(const std::string& name);
const char* WorkloadKindName(WorkloadKind kind);

struct ChatTurn {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// One line of a JSONL dataset.
struct DatasetEntry {
  std::string prompt;              // set for completion prompts
  std::vector<ChatTurn> messages;  // set for chat prompts (then prompt is "")
  int32_t output_len = 0;          // target generated tokens, > 0
};

// Parses one JSONL line; `line_number` (1-based) only names the line in
// errors.
absl::StatusOr<DatasetEntry> ParseDatasetLine(const std::string& line,
                                              int line_number);
// Reads a whole JSONL file (blank lines skipped); fails on the first bad
// line, naming the file and line.
absl::StatusOr<std::vector<DatasetEntry>> LoadDataset(const std::string& path);

// One request to send.
struct BenchRequest {
  enum class Kind { kTokenIds, kText, kChat };
  Kind kind = Kind::kTokenIds;
  std::vector<int32_t> token_ids;  // [prompt_len], kTokenIds
  std::string text;                // kText
  std::vector<ChatTurn> messages;  // kChat
  // Prompt tokens when known before sending (kTokenIds), else -1: the
  // server's usage.prompt_tokens is authoritative.
  int32_t prompt_len = -1;
  int32_t output_len = 0;  // max_tokens, > 0
};

class Workload {
 public:
  struct Options {
    WorkloadKind kind = WorkloadKind::kRandom;
    // random and shared_prefix: lengths are drawn uniformly from
    // [len * (1 - range_ratio), len * (1 + range_ratio)], at least 1.
    int32_t input_len = 128;  // shared_prefix: the part after the prefix
    int32_t output_len = 128;
    double range_ratio = 0.0;  // [0, 1)
    // shared_prefix only.
    int32_t num_prefixes = 4;
    int32_t prefix_len = 256;
    // Random token ids are drawn from [min_token_id, max_token_id), skipping
    // excluded_token_ids (the model's EOS and BOS ids).
    int32_t min_token_id = 0;
    int32_t max_token_id = 0;  // exclusive; usually the model's vocab_size
    std::vector<int32_t> excluded_token_ids;
    // dataset only. dataset_output_len > 0 overrides every line's output_len.
    std::string dataset_path;
    int32_t dataset_output_len = 0;
    uint64_t seed = 0;
  };

  static absl::StatusOr<std::unique_ptr<Workload>> Create(
      const Options& options);
  // For tests and callers that already hold the entries.
  static absl::StatusOr<std::unique_ptr<Workload>> CreateFromEntries(
      const Options& options, std::vector<DatasetEntry> entries);

  // The request for `index`: a pure function of (options, index).
  // Thread-safe.
  BenchRequest Make(int64_t index) const;

  // Fails when a known-length request could exceed `context_length` tokens
  // (prompt + output); dataset text prompts are only checked by the server.
  absl::Status CheckFits(int64_t context_length) const;

  // One line for reports, e.g. "random input_len=128 output_len=128 ...".
  std::string Describe() const;

  const Options& options() const { return options_; }

 private:
  Workload(const Options& options, std::vector<DatasetEntry> entries);
  std::vector<int32_t> RandomTokens(uint64_t stream, int32_t count) const;

  Options options_;
  std::vector<DatasetEntry> entries_;           // dataset only
  std::vector<int64_t> order_;                  // [entries] seeded shuffle
  std::vector<std::vector<int32_t>> prefixes_;  // [num_prefixes][prefix_len]
  std::vector<int32_t> allowed_token_ids_;      // sorted ids random draws use
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_WORKLOAD_H_
