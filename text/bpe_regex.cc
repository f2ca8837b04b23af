#include "text/bpe_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace strata {
namespace {

// Bounds the backtracking one match may do, so a pathological pattern or
// input fails with an error instead of hanging a request thread.
constexpr uint32_t kMatchLimit = 50'000'000;
// Heap the interpreter may use for backtracking, in KiB.
constexpr uint32_t kHeapLimitKib = 256 * 1024;

std::string Pcre2ErrorMessage(int error_code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  if (n < 0) return absl::StrCat("PCRE2 error ", error_code);
  return std::string(reinterpret_cast<const char*>(buffer),
                     static_cast<size_t>(n));
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeRegex>> BpeRegex::Compile(
    std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
      PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, /*ccontext=*/nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("regex does not compile at pattern offset ", error_offset,
                     ": ", Pcre2ErrorMessage(error_code)));
  }
  // JIT is an optimisation: when unavailable, matching uses the interpreter.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  pcre2_match_context* match_context = pcre2_match_context_create(nullptr);
  if (match_context == nullptr) {
    pcre2_code_free(code);
    return absl::ResourceExhaustedError("cannot allocate a PCRE2 context");
  }
  pcre2_set_match_limit(match_context, kMatchLimit);
  pcre2_set_heap_limit(match_context, kHeapLimitKib);
  return std::unique_ptr<BpeRegex>(
      new BpeRegex(std::string(pattern), code, match_context));
}

BpeRegex::BpeRegex(std::string pattern, pcre2_real_code_8* code,
                   pcre2_real_match_context_8* match_context)
    : pattern_(std::move(pattern)),
      code_(code),
      match_context_(match_context) {}

BpeRegex::~BpeRegex() {
  pcre2_match_context_free(match_context_);
  pcre2_code_free(code_);
}

absl::Status BpeRegex::FindAll(std::string_view subject,
                               std::vector<Match>* matches) const {
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match_data(
      pcre2_match_data_create_from_pattern(code_, nullptr));
  if (match_data == nullptr) {
    return absl::ResourceExhaustedError("cannot allocate PCRE2 match data");
  }
  const auto* data = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const size_t size = subject.size();
  size_t start = 0;
  // After an empty match, first look for a non-empty match at the same
  // position (anchored), then move on by one character (as pcre2demo does).
  uint32_t retry_options = 0;
  while (start <= size) {
    const uint32_t options = retry_options | PCRE2_NO_UTF_CHECK;
    int rc = pcre2_match(code_, data, size, start, options, match_data.get(),
                         match_context_);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code_, data, size, start, options | PCRE2_NO_JIT,
                       match_data.get(), match_context_);
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
      if (retry_options == 0 || start >= size) break;
      start += static_cast<size_t>(
          Utf8SequenceLength(static_cast<uint8_t>(subject[start])));
      retry_options = 0;
      continue;
    }
    if (rc < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pre-tokenizer regex failed at byte ", start, ": ",
                       Pcre2ErrorMessage(rc)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end < begin || end > size) {
      return absl::InvalidArgumentError(
          "pre-tokenizer regex uses \\K to end a match before its start");
    }
    matches->emplace_back(begin, end);
    retry_options = begin == end ? PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED : 0;
    start = end;
  }
  return absl::OkStatus();
}

}  // namespace strata
