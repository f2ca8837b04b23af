#include "text/bpe_pre_tokenizer.h"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "text/bpe_regex.h"
#include "text/byte_level.h"

namespace strata {
namespace {

using Json = nlohmann::json;

// What a Split step does with the pieces its pattern matches (HF
// SplitDelimiterBehavior).
enum class SplitBehavior {
  kIsolated,            // matches become pieces of their own
  kRemoved,             // matches are dropped
  kMergedWithPrevious,  // a match is glued to the piece before it
  kMergedWithNext,      // a match is glued to the piece after it
  kContiguous,          // runs of matches / non-matches are merged
};

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& value,
                                            const std::string& path) {
  if (!value.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a string"));
  }
  const std::string& name = value.get_ref<const std::string&>();
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::UnimplementedError(
      absl::StrCat(path, ": split behavior \"", name, "\" is not supported"));
}

absl::StatusOr<bool> OptionalBool(const Json& object, const char* key,
                                  bool default_value, const std::string& path) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".", key, ": expected true or false"));
  }
  return it->get<bool>();
}

// A byte range of a piece and whether the pattern matched it.
struct Span {
  size_t begin;
  size_t end;
  bool flag;  // before the behavior: "is a match"; after it: "remove"
};

// HF NormalizedString::split: turns the alternating match / non-match spans
// of one piece into the spans to keep.
std::vector<Span> ApplyBehavior(std::vector<Span> spans,
                                SplitBehavior behavior) {
  std::vector<Span> out;
  out.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (Span& s : spans) out.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      out = std::move(spans);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.flag && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.begin, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->flag && !previous_match && !out.empty()) {
          out.back().begin = it->begin;
        } else {
          out.push_back({it->begin, it->end, false});
        }
        previous_match = it->flag;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.flag == previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.begin, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
  }
  return out;
}

// Alternating non-match / match spans covering `piece`, given its matches.
std::vector<Span> SpansFromMatches(size_t piece_size,
                                   const std::vector<BpeRegex::Match>& matches,
                                   bool invert) {
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  size_t previous = 0;
  for (const auto& [begin, end] : matches) {
    if (begin != previous) spans.push_back({previous, begin, false});
    spans.push_back({begin, end, true});
    previous = end;
  }
  if (previous != piece_size) spans.push_back({previous, piece_size, false});
  if (invert) {
    for (Span& s : spans) s.flag = !s.flag;
  }
  return spans;
}

void FindLiteral(std::string_view piece, std::string_view literal,
                 std::vector<BpeRegex::Match>* matches) {
  if (literal.empty()) return;
  size_t pos = 0;
  while ((pos = piece.find(literal, pos)) != std::string_view::npos) {
    matches->emplace_back(pos, pos + literal.size());
    pos += literal.size();
  }
}

}  // namespace

struct BpePreTokenizer::Step {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  // kSplit: the pattern is `regex`, or `literal` when regex is null.
  // kByteLevel: `regex` is the GPT-2 pattern when use_regex, else null.
  std::unique_ptr<BpeRegex> regex;
  std::string literal;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel only
};

absl::Status BpePreTokenizer::ParseSteps(const Json& config,
                                         const std::string& path,
                                         std::vector<Step>* steps) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected an object"));
  }
  auto type_it = config.find("type");
  if (type_it == config.end() || !type_it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".type: missing or not a string"));
  }
  const std::string& type = type_it->get_ref<const std::string&>();
  if (type == "Sequence") {
    auto list = config.find("pretokenizers");
    if (list == config.end() || !list->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".pretokenizers: missing or not an array"));
    }
    for (size_t i = 0; i < list->size(); ++i) {
      absl::Status status = ParseSteps(
          (*list)[i], absl::StrCat(path, ".pretokenizers[", i, "]"), steps);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }
  Step step;
  if (type == "ByteLevel") {
    step.kind = Step::Kind::kByteLevel;
    absl::StatusOr<bool> add_prefix_space =
        OptionalBool(config, "add_prefix_space", true, path);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    absl::StatusOr<bool> use_regex =
        OptionalBool(config, "use_regex", true, path);
    if (!use_regex.ok()) return use_regex.status();
    step.add_prefix_space = *add_prefix_space;
    if (*use_regex) {
      absl::StatusOr<std::unique_ptr<BpeRegex>> regex =
          BpeRegex::Compile(kGpt2SplitPattern);
      if (!regex.ok()) return regex.status();
      step.regex = *std::move(regex);
    }
  } else if (type == "Split") {
    step.kind = Step::Kind::kSplit;
    auto pattern = config.find("pattern");
    if (pattern == config.end() || !pattern->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".pattern: missing or not an object"));
    }
    if (auto regex_source = pattern->find("Regex");
        regex_source != pattern->end() && regex_source->is_string()) {
      absl::StatusOr<std::unique_ptr<BpeRegex>> regex =
          BpeRegex::Compile(regex_source->get_ref<const std::string&>());
      if (!regex.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".pattern.Regex: ", regex.status().message()));
      }
      step.regex = *std::move(regex);
    } else if (auto literal = pattern->find("String");
               literal != pattern->end() && literal->is_string()) {
      step.literal = literal->get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path,
                       ".pattern: expected {\"Regex\": string} or {\"String\": "
                       "string}"));
    }
    auto behavior = config.find("behavior");
    if (behavior == config.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".behavior: missing"));
    }
    absl::StatusOr<SplitBehavior> parsed =
        ParseBehavior(*behavior, absl::StrCat(path, ".behavior"));
    if (!parsed.ok()) return parsed.status();
    step.behavior = *parsed;
    absl::StatusOr<bool> invert = OptionalBool(config, "invert", false, path);
    if (!invert.ok()) return invert.status();
    step.invert = *invert;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        path, ": pre-tokenizer type \"", type,
        "\" is not supported (byte-level BPE only: Split, ByteLevel, "
        "Sequence)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BpePreTokenizer>> BpePreTokenizer::FromJson(
    const Json& config) {
  std::vector<Step> steps;
  if (!config.is_null()) {
    absl::Status status = ParseSteps(config, "pre_tokenizer", &steps);
    if (!status.ok()) return status;
  }
  int num_byte_level = 0;
  for (const Step& step : steps) {
    num_byte_level += step.kind == Step::Kind::kByteLevel ? 1 : 0;
  }
  if (num_byte_level != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "pre_tokenizer: only byte-level BPE tokenizers are supported; "
        "expected exactly one ByteLevel pre-tokenizer, found ",
        num_byte_level));
  }
  return std::unique_ptr<BpePreTokenizer>(
      new BpePreTokenizer(std::move(steps)));
}

BpePreTokenizer::BpePreTokenizer(std::vector<Step> steps)
    : steps_(std::move(steps)) {}

BpePreTokenizer::~BpePreTokenizer() = default;

absl::Status BpePreTokenizer::Split(std::string_view text,
                                    std::vector<std::string>* words) const {
  std::vector<std::string> pieces;
  if (!text.empty()) pieces.emplace_back(text);
  std::vector<std::string> next;
  std::vector<BpeRegex::Match> matches;
  for (const Step& step : steps_) {
    next.clear();
    for (std::string& piece : pieces) {
      if (step.kind == Step::Kind::kByteLevel && step.add_prefix_space &&
          (piece.empty() || piece.front() != ' ')) {
        piece.insert(piece.begin(), ' ');
      }
      std::vector<Span> keep;
      if (step.kind == Step::Kind::kSplit || step.regex != nullptr) {
        matches.clear();
        if (step.regex != nullptr) {
          absl::Status status = step.regex->FindAll(piece, &matches);
          if (!status.ok()) return status;
        } else {
          FindLiteral(piece, step.literal, &matches);
        }
        const bool isolated = step.kind == Step::Kind::kByteLevel;
        keep = ApplyBehavior(
            SpansFromMatches(piece.size(), matches, !isolated && step.invert),
            isolated ? SplitBehavior::kIsolated : step.behavior);
      } else {
        keep.push_back({0, piece.size(), false});
      }
      for (const Span& span : keep) {
        if (span.flag || span.begin == span.end) continue;
        std::string_view part =
            std::string_view(piece).substr(span.begin, span.end - span.begin);
        if (step.kind == Step::Kind::kByteLevel) {
          next.push_back(ByteLevelEncode(part));
        } else {
          next.emplace_back(part);
        }
      }
    }
    pieces.swap(next);
  }
  for (std::string& piece : pieces) words->push_back(std::move(piece));
  return absl::OkStatus();
}

}  // namespace strata
