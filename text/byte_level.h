// The GPT-2 "byte-level" alphabet used by byte-level BPE tokenizers (GPT-2,
// Llama 3, Qwen2).
//
// Every byte 0..255 is given a printable Unicode character so that a vocabulary
// of byte strings can be stored as text: the printable bytes '!'..'~',
// U+00A1..U+00AC and U+00AE..U+00FF stand for themselves, and the remaining 68
// bytes (controls, space, DEL, NBSP, soft hyphen) map in order to U+0100,
// U+0101, ... (so ' ' is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A).
#ifndef STRATA_TEXT_BYTE_LEVEL_H_
#define STRATA_TEXT_BYTE_LEVEL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strata {

// The character byte `b` is written as.
char32_t ByteToByteLevelChar(uint8_t b);

// The byte a byte-level character stands for; nullopt if `c` is not one of the
// 256 characters of the alphabet.
std::optional<uint8_t> ByteLevelCharToByte(char32_t c);

// Maps raw bytes to their byte-level text (each byte becomes one character).
std::string ByteLevelEncode(std::string_view bytes);

// Maps byte-level text back to raw bytes. `text` must be well-formed UTF-8.
// Returns nullopt if any character is outside the alphabet.
std::optional<std::string> ByteLevelDecode(std::string_view text);

}  // namespace strata

#endif  // STRATA_TEXT_BYTE_LEVEL_H_
