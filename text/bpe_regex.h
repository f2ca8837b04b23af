// A compiled PCRE2 regular expression used by the BPE pre-tokenizer.
//
// Patterns are compiled once with PCRE2_UTF | PCRE2_UCP (so \s, \w, \d and
// the \p{..} classes are Unicode-aware, like the Oniguruma patterns Hugging
// Face tokenizers were written for) and JIT-compiled where the platform
// allows. FindAll is const and thread-safe: the compiled code and the match
// context (which only carries limits) are shared read-only, and each call
// allocates its own pcre2_match_data. No JIT stack is attached to the shared
// context (JIT stacks must not be shared between threads); a match that
// overflows the default JIT stack is rerun by the interpreter instead.
#ifndef STRATA_TEXT_BPE_REGEX_H_
#define STRATA_TEXT_BPE_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Opaque PCRE2 types (pcre2.h with PCRE2_CODE_UNIT_WIDTH 8).
struct pcre2_real_code_8;
struct pcre2_real_match_context_8;

namespace strata {

class BpeRegex {
 public:
  // A match as a byte range [begin, end) of the subject.
  using Match = std::pair<size_t, size_t>;

  // INVALID_ARGUMENT with PCRE2's message and offset if `pattern` does not
  // compile.
  static absl::StatusOr<std::unique_ptr<BpeRegex>> Compile(
      std::string_view pattern);

  ~BpeRegex();
  BpeRegex(const BpeRegex&) = delete;
  BpeRegex& operator=(const BpeRegex&) = delete;

  // Appends every successive non-overlapping match in `subject` (leftmost
  // first, Perl semantics for empty matches). `subject` must be well-formed
  // UTF-8 (it is not re-checked). Fails only when a resource limit is hit.
  absl::Status FindAll(std::string_view subject,
                       std::vector<Match>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  BpeRegex(std::string pattern, pcre2_real_code_8* code,
           pcre2_real_match_context_8* match_context);

  std::string pattern_;
  pcre2_real_code_8* code_;                    // owned
  pcre2_real_match_context_8* match_context_;  // owned; limits only
};

}  // namespace strata

#endif  // STRATA_TEXT_BPE_REGEX_H_
