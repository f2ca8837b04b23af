#include "bench/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace strata::bench {
namespace {

// SplitMix64 finalizer: turns (seed, index, stream) into independent-looking
// RNG seeds so request i's prompt does not depend on how many were drawn
// before it.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t SeedFor(uint64_t seed, uint64_t stream, uint64_t index) {
  return Mix(Mix(Mix(seed) ^ stream) ^ index);
}

// Stream tags so prefixes, lengths and suffixes draw from unrelated seeds.
constexpr uint64_t kRequestStream = 1;
constexpr uint64_t kPrefixStream = 2;
constexpr uint64_t kShuffleStream = 3;

int32_t LowerLen(int32_t len, double ratio) {
  return std::max<int32_t>(1,
                           static_cast<int32_t>(std::floor(len * (1 - ratio))));
}
int32_t UpperLen(int32_t len, double ratio) {
  return std::max(LowerLen(len, ratio),
                  static_cast<int32_t>(std::floor(len * (1 + ratio))));
}

int32_t DrawLen(std::mt19937_64& rng, int32_t len, double ratio) {
  std::uniform_int_distribution<int32_t> dist(LowerLen(len, ratio),
                                              UpperLen(len, ratio));
  return dist(rng);
}

}  // namespace

absl::StatusOr<WorkloadKind> ParseWorkloadKind(const std::string& name) {
  if (name == "random" || name == "fixed") return WorkloadKind::kRandom;
  if (name == "shared_prefix") return WorkloadKind::kSharedPrefix;
  if (name == "dataset") return WorkloadKind::kDataset;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown workload '", name,
                   "' (expected random, fixed, shared_prefix or dataset)"));
}

const char* WorkloadKindName(WorkloadKind kind) {
  switch (kind) {
    case WorkloadKind::kRandom:
      return "random";
    case WorkloadKind::kSharedPrefix:
      return "shared_prefix";
    case WorkloadKind::kDataset:
      return "dataset";
  }
  return "unknown";
}

absl::StatusOr<DatasetEntry> ParseDatasetLine(const std::string& line,
                                              int line_number) {
  const std::string where = absl::StrCat("line ", line_number, ": ");
  const nlohmann::json json =
      nlohmann::json::parse(line, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "not valid JSON"));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "expected a JSON object"));
  }
  DatasetEntry entry;
  const bool has_prompt = json.contains("prompt");
  const bool has_messages = json.contains("messages");
  if (has_prompt == has_messages) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "needs exactly one of \"prompt\" and \"messages\""));
  }
  if (has_prompt) {
    const nlohmann::json& prompt = json["prompt"];
    if (!prompt.is_string() || prompt.get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"prompt\" must be a non-empty string"));
    }
    entry.prompt = prompt.get<std::string>();
  } else {
    const nlohmann::json& messages = json["messages"];
    if (!messages.is_array() || messages.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"messages\" must be a non-empty array"));
    }
    for (const nlohmann::json& message : messages) {
      if (!message.is_object() || !message.contains("role") ||
          !message.contains("content") || !message["role"].is_string() ||
          !message["content"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "each message needs string \"role\" and \"content\""));
      }
      const std::string role = message["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "unknown role '", role, "'"));
      }
      entry.messages.push_back({role, message["content"].get<std::string>()});
    }
  }
  if (!json.contains("output_len") || !json["output_len"].is_number_integer() ||
      json["output_len"].get<int64_t>() <= 0 ||
      json["output_len"].get<int64_t>() > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "\"output_len\" must be an integer in [1, 1048576]"));
  }
  entry.output_len = json["output_len"].get<int32_t>();
  return entry;
}

absl::StatusOr<std::vector<DatasetEntry>> LoadDataset(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open dataset ", path));
  }
  std::vector<DatasetEntry> entries;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<DatasetEntry> entry = ParseDatasetLine(line, line_number);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", entry.status().message()));
    }
    entries.push_back(*std::move(entry));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " has no entries"));
  }
  return entries;
}

absl::StatusOr<std::unique_ptr<Workload>> Workload::Create(
    const Options& options) {
  std::vector<DatasetEntry> entries;
  if (options.kind == WorkloadKind::kDataset) {
    if (options.dataset_path.empty()) {
      return absl::InvalidArgumentError("the dataset workload needs a path");
    }
    absl::StatusOr<std::vector<DatasetEntry>> loaded =
        LoadDataset(options.dataset_path);
    if (!loaded.ok()) return loaded.status();
    entries = *std::move(loaded);
  }
  return CreateFromEntries(options, std::move(entries));
}

absl::StatusOr<std::unique_ptr<Workload>> Workload::CreateFromEntries(
    const Options& options, std::vector<DatasetEntry> entries) {
  if (options.kind == WorkloadKind::kDataset) {
    if (entries.empty()) {
      return absl::InvalidArgumentError("the dataset has no entries");
    }
    if (options.dataset_output_len < 0) {
      return absl::InvalidArgumentError("dataset_output_len must be >= 0");
    }
    return std::unique_ptr<Workload>(new Workload(options, std::move(entries)));
  }
  if (options.input_len < 1 || options.output_len < 1) {
    return absl::InvalidArgumentError(
        "input_len and output_len must be at least 1");
  }
  if (!(options.range_ratio >= 0 && options.range_ratio < 1)) {
    return absl::InvalidArgumentError("range_ratio must be in [0, 1)");
  }
  if (options.kind == WorkloadKind::kSharedPrefix &&
      (options.num_prefixes < 1 || options.prefix_len < 1)) {
    return absl::InvalidArgumentError(
        "shared_prefix needs num_prefixes >= 1 and prefix_len >= 1");
  }
  if (options.min_token_id < 0 ||
      options.max_token_id <= options.min_token_id) {
    return absl::InvalidArgumentError(
        absl::StrFormat("empty token id range [%d, %d)", options.min_token_id,
                        options.max_token_id));
  }
  auto workload =
      std::unique_ptr<Workload>(new Workload(options, std::move(entries)));
  if (workload->allowed_token_ids_.empty()) {
    return absl::InvalidArgumentError(
        "every token id in range is excluded; widen the range");
  }
  return workload;
}

Workload::Workload(const Options& options, std::vector<DatasetEntry> entries)
    : options_(options), entries_(std::move(entries)) {
  if (options_.kind == WorkloadKind::kDataset) {
    order_.resize(entries_.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    std::mt19937_64 rng(SeedFor(options_.seed, kShuffleStream, 0));
    std::shuffle(order_.begin(), order_.end(), rng);
    return;
  }
  std::vector<int32_t> excluded = options_.excluded_token_ids;
  std::sort(excluded.begin(), excluded.end());
  for (int32_t id = options_.min_token_id; id < options_.max_token_id; ++id) {
    if (!std::binary_search(excluded.begin(), excluded.end(), id)) {
      allowed_token_ids_.push_back(id);
    }
  }
  if (options_.kind == WorkloadKind::kSharedPrefix &&
      !allowed_token_ids_.empty()) {
    for (int32_t p = 0; p < options_.num_prefixes; ++p) {
      prefixes_.push_back(RandomTokens(SeedFor(options_.seed, kPrefixStream, p),
                                       options_.prefix_len));
    }
  }
}

std::vector<int32_t> Workload::RandomTokens(uint64_t stream,
                                            int32_t count) const {
  std::mt19937_64 rng(stream);
  std::uniform_int_distribution<size_t> pick(0, allowed_token_ids_.size() - 1);
  std::vector<int32_t> ids(count);
  for (int32_t& id : ids) id = allowed_token_ids_[pick(rng)];
  return ids;
}

BenchRequest Workload::Make(int64_t index) const {
  BenchRequest request;
  if (options_.kind == WorkloadKind::kDataset) {
    const uint64_t slot = static_cast<uint64_t>(index) % entries_.size();
    const DatasetEntry& entry = entries_[order_[slot]];
    if (entry.messages.empty()) {
      request.kind = BenchRequest::Kind::kText;
      request.text = entry.prompt;
    } else {
      request.kind = BenchRequest::Kind::kChat;
      request.messages = entry.messages;
    }
    request.output_len = options_.dataset_output_len > 0
                             ? options_.dataset_output_len
                             : entry.output_len;
    return request;
  }
  std::mt19937_64 rng(SeedFor(options_.seed, kRequestStream, index));
  const int32_t input_len =
      DrawLen(rng, options_.input_len, options_.range_ratio);
  request.output_len = DrawLen(rng, options_.output_len, options_.range_ratio);
  const uint64_t suffix_seed = rng();
  request.kind = BenchRequest::Kind::kTokenIds;
  if (options_.kind == WorkloadKind::kSharedPrefix) {
    const size_t prefix = rng() % prefixes_.size();
    request.token_ids = prefixes_[prefix];
  }
  const std::vector<int32_t> suffix = RandomTokens(suffix_seed, input_len);
  request.token_ids.insert(request.token_ids.end(), suffix.begin(),
                           suffix.end());
  request.prompt_len = static_cast<int32_t>(request.token_ids.size());
  return request;
}

absl::Status Workload::CheckFits(int64_t context_length) const {
  if (context_length <= 0) return absl::OkStatus();
  int64_t longest = 0;
  if (options_.kind == WorkloadKind::kDataset) {
    for (const DatasetEntry& entry : entries_) {
      longest = std::max<int64_t>(longest, options_.dataset_output_len > 0
                                               ? options_.dataset_output_len
                                               : entry.output_len);
    }
  } else {
    longest = int64_t{UpperLen(options_.input_len, options_.range_ratio)} +
              UpperLen(options_.output_len, options_.range_ratio);
    if (options_.kind == WorkloadKind::kSharedPrefix) {
      longest += options_.prefix_len;
    }
  }
  if (longest > context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("the workload's longest request needs ", longest,
                     " tokens (prompt + output) but the model's context is ",
                     context_length));
  }
  return absl::OkStatus();
}

std::string Workload::Describe() const {
  const Options& o = options_;
  switch (o.kind) {
    case WorkloadKind::kRandom:
      return absl::StrFormat("random input_len=%d output_len=%d range_ratio=%g",
                             o.input_len, o.output_len, o.range_ratio);
    case WorkloadKind::kSharedPrefix:
      return absl::StrFormat(
          "shared_prefix num_prefixes=%d prefix_len=%d input_len=%d "
          "output_len=%d range_ratio=%g",
          o.num_prefixes, o.prefix_len, o.input_len, o.output_len,
          o.range_ratio);
    case WorkloadKind::kDataset:
      return absl::StrFormat(
          "dataset %s (%d entries)%s", o.dataset_path, entries_.size(),
          o.dataset_output_len > 0
              ? absl::StrCat(" output_len=", o.dataset_output_len)
              : "");
  }
  return "unknown";
}

}  // namespace strata::bench
