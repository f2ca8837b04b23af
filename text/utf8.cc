#include "text/utf8.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strata {
namespace {

// Outcome of examining the sequence that starts at one position.
struct SequenceScan {
  enum Kind {
    kValid,       // a complete, well-formed sequence of `length` bytes
    kInvalid,     // an ill-formed maximal subpart of `length` bytes
    kIncomplete,  // well-formed so far but the input ends after `length`
  };
  Kind kind;
  size_t length;
};

// Unicode Table 3-7 (well-formed byte sequences): the allowed range of the
// second byte depends on the lead byte; later bytes are 80..BF.
SequenceScan ScanSequence(std::string_view bytes, size_t pos) {
  const uint8_t lead = static_cast<uint8_t>(bytes[pos]);
  if (lead < 0x80) return {SequenceScan::kValid, 1};
  size_t need;
  uint8_t second_lo = 0x80;
  uint8_t second_hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) second_lo = 0xA0;  // no overlongs
    if (lead == 0xED) second_hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) second_lo = 0x90;  // no overlongs
    if (lead == 0xF4) second_hi = 0x8F;  // <= U+10FFFF
  } else {
    return {SequenceScan::kInvalid, 1};  // C0, C1, F5..FF or a lone 80..BF
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= bytes.size()) return {SequenceScan::kIncomplete, i};
    const uint8_t b = static_cast<uint8_t>(bytes[pos + i]);
    const uint8_t lo = i == 1 ? second_lo : 0x80;
    const uint8_t hi = i == 1 ? second_hi : 0xBF;
    if (b < lo || b > hi) return {SequenceScan::kInvalid, i};
  }
  return {SequenceScan::kValid, need};
}

}  // namespace

std::optional<size_t> FindInvalidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // Fast path over ASCII runs.
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const SequenceScan scan = ScanSequence(text, pos);
    if (scan.kind != SequenceScan::kValid) return pos;
    pos += scan.length;
  }
  return std::nullopt;
}

size_t AppendUtf8Lossy(std::string_view bytes, bool final, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceScan scan = ScanSequence(bytes, pos);
    switch (scan.kind) {
      case SequenceScan::kValid:
        out->append(bytes.substr(pos, scan.length));
        break;
      case SequenceScan::kInvalid:
        out->append(kUtf8Replacement);
        break;
      case SequenceScan::kIncomplete:
        if (!final) return pos;
        out->append(kUtf8Replacement);
        break;
    }
    pos += scan.length;
  }
  return pos;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*final=*/true, &out);
  return out;
}

void AppendUtf8(char32_t code_point, std::string* out) {
  const uint32_t cp = static_cast<uint32_t>(code_point);
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsUnicodeWhiteSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

int Utf8SequenceLength(uint8_t lead) {
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  return 1;
}

char32_t DecodeUtf8At(std::string_view text, size_t* pos) {
  const uint8_t lead = static_cast<uint8_t>(text[*pos]);
  int length = Utf8SequenceLength(lead);
  // Defensive: a truncated sequence (ill-formed input) reads as one byte
  // instead of running past the end.
  if (*pos + static_cast<size_t>(length) > text.size()) length = 1;
  uint32_t cp;
  switch (length) {
    case 2:
      cp = lead & 0x1F;
      break;
    case 3:
      cp = lead & 0x0F;
      break;
    case 4:
      cp = lead & 0x07;
      break;
    default:
      ++*pos;
      return lead;
  }
  for (int i = 1; i < length; ++i) {
    cp = (cp << 6) | (static_cast<uint8_t>(text[*pos + i]) & 0x3F);
  }
  *pos += length;
  return static_cast<char32_t>(cp);
}

}  // namespace strata
