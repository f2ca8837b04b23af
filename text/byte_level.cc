#include "text/byte_level.h"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "text/utf8.h"

namespace strata {
namespace {

bool IsSelfMapped(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
         (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelTables {
  std::array<char32_t, 256> byte_to_char;
  // UTF-8 encoding of byte_to_char[b], precomputed for ByteLevelEncode.
  std::array<std::string, 256> byte_to_utf8;
  // Characters of the alphabet are all below U+0144.
  static constexpr char32_t kMaxChar = 0x144;
  std::array<int16_t, kMaxChar> char_to_byte;  // -1: not in the alphabet

  ByteLevelTables() {
    char_to_byte.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = IsSelfMapped(b) ? static_cast<char32_t>(b) : next++;
      byte_to_char[b] = c;
      AppendUtf8(c, &byte_to_utf8[b]);
      char_to_byte[c] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* const tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

char32_t ByteToByteLevelChar(uint8_t b) { return Tables().byte_to_char[b]; }

std::optional<uint8_t> ByteLevelCharToByte(char32_t c) {
  if (c >= ByteLevelTables::kMaxChar) return std::nullopt;
  const int16_t b = Tables().char_to_byte[c];
  if (b < 0) return std::nullopt;
  return static_cast<uint8_t>(b);
}

std::string ByteLevelEncode(std::string_view bytes) {
  const ByteLevelTables& tables = Tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) out += tables.byte_to_utf8[static_cast<uint8_t>(ch)];
  return out;
}

std::optional<std::string> ByteLevelDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const std::optional<uint8_t> b =
        ByteLevelCharToByte(DecodeUtf8At(text, &pos));
    if (!b.has_value()) return std::nullopt;
    out.push_back(static_cast<char>(*b));
  }
  return out;
}

}  // namespace strata
