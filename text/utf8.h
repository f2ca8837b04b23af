// UTF-8 helpers shared by the tokenizer, the detokenizers and the chat
// templates.
//
// Invalid input is replaced the way the WHATWG/Unicode "substitution of
// maximal subparts" practice does it (and so Python's
// bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy): every
// maximal prefix of a well-formed sequence that is cut short, and every byte
// that cannot start one, becomes one U+FFFD. The streaming form
// (AppendUtf8Lossy with final = false) makes exactly the decisions the one-shot
// form makes, so decoding in pieces and concatenating equals decoding at once.
#ifndef STRATA_TEXT_UTF8_H_
#define STRATA_TEXT_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strata {

// U+FFFD REPLACEMENT CHARACTER, encoded.
inline constexpr std::string_view kUtf8Replacement = "\xEF\xBF\xBD";

// Returns the byte offset of the first ill-formed sequence, or nullopt when
// `text` is entirely well-formed UTF-8 (no overlongs, surrogates or code
// points above U+10FFFF).
std::optional<size_t> FindInvalidUtf8(std::string_view text);
inline bool IsValidUtf8(std::string_view text) {
  return !FindInvalidUtf8(text).has_value();
}

// Appends `bytes` to `out` as well-formed UTF-8, replacing ill-formed parts by
// U+FFFD. When `final` is false, a well-formed but incomplete sequence at the
// very end is not consumed (more bytes may complete it). Returns the number of
// bytes of `bytes` consumed (always bytes.size() when `final`).
size_t AppendUtf8Lossy(std::string_view bytes, bool final, std::string* out);

// One-shot form of AppendUtf8Lossy(bytes, /*final=*/true, ...).
std::string Utf8Lossy(std::string_view bytes);

// Appends the UTF-8 encoding of `code_point` (must be <= 0x10FFFF and not a
// surrogate).
void AppendUtf8(char32_t code_point, std::string* out);

// Decodes the code point starting at text[*pos] and advances *pos past it.
// `text` should be well-formed UTF-8 and *pos < text.size() on a boundary;
// on ill-formed input the result is meaningless but stays in bounds.
char32_t DecodeUtf8At(std::string_view text, size_t* pos);

// Unicode White_Space property (what Rust's char::is_whitespace tests).
bool IsUnicodeWhiteSpace(char32_t c);

// The largest character boundary <= pos in well-formed `text` (pos <=
// text.size(); at most 3 bytes back).
inline size_t Utf8BoundaryAtOrBefore(std::string_view text, size_t pos) {
  while (pos > 0 && pos < text.size() &&
         (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) {
    --pos;
  }
  return pos;
}

// Length in bytes of the sequence a lead byte starts (1 for ASCII and for
// bytes that cannot lead; callers that need validity use the functions
// above).
int Utf8SequenceLength(uint8_t lead);

}  // namespace strata

#endif  // STRATA_TEXT_UTF8_H_
