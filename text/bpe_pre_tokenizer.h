// The pre-tokenizer of a byte-level BPE tokenizer.json: cuts text into the
// "words" that BPE merges run on, and maps them to the byte-level alphabet.
//
// Supported "pre_tokenizer" types (Hugging Face tokenizers semantics):
//   Split     {"pattern": {"Regex": ".."} | {"String": ".."}, "behavior":
//             Isolated | Removed | MergedWithPrevious | MergedWithNext |
//             Contiguous, "invert": bool}
//   ByteLevel {"add_prefix_space": bool, "use_regex": bool} -- with use_regex
//             the text is first split with the GPT-2 pattern; then every
//             piece is rewritten in the byte-level alphabet (byte_level.h).
//   Sequence  {"pretokenizers": [...]} -- applied in order.
// Exactly one ByteLevel step is required: vocabularies of other tokenizer
// families (SentencePiece "Metaspace", WordPiece ...) are refused.
#ifndef STRATA_TEXT_BPE_PRE_TOKENIZER_H_
#define STRATA_TEXT_BPE_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "text/bpe_regex.h"

namespace strata {

// The GPT-2 pre-tokenization pattern used by ByteLevel{use_regex: true}.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class BpePreTokenizer {
 public:
  // Parses the tokenizer.json "pre_tokenizer" value. Errors name the JSON
  // path (e.g. "pre_tokenizer.pretokenizers[0].behavior") but not the file;
  // the caller adds it. UNIMPLEMENTED for unsupported types.
  static absl::StatusOr<std::unique_ptr<BpePreTokenizer>> FromJson(
      const nlohmann::json& config);

  ~BpePreTokenizer();
  BpePreTokenizer(const BpePreTokenizer&) = delete;
  BpePreTokenizer& operator=(const BpePreTokenizer&) = delete;

  // Appends the words of `text` (well-formed UTF-8), each in the byte-level
  // alphabet, to `words`. Thread-safe.
  absl::Status Split(std::string_view text,
                     std::vector<std::string>* words) const;

 private:
  struct Step;
  explicit BpePreTokenizer(std::vector<Step> steps);
  // Parses one pre-tokenizer object at JSON path `path` (recursing into
  // Sequence) and appends its steps.
  static absl::Status ParseSteps(const nlohmann::json& config,
                                 const std::string& path,
                                 std::vector<Step>* steps);

  std::vector<Step> steps_;  // applied in order
};

}  // namespace strata

#endif  // STRATA_TEXT_BPE_PRE_TOKENIZER_H_
