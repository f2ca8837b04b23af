// Arbitrary token id streams (any int32, out of range included) through the
// IncrementalDetokenizer: its documented invariant is checked on every
// input: the deltas are well-formed UTF-8 and their concatenation (plus
// Flush) equals Tokenizer::Decode of all ids.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/logging.h"
#include "tests/fuzz/fuzz_util.h"
#include "text/incremental_detokenizer.h"
#include "text/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const strata::Tokenizer& tokenizer =
      strata::fuzz::FixtureTokenizer("tiny-llama");
  if (size == 0) return 0;
  const bool skip_special = data[0] & 1;
  std::vector<strata::TokenId> ids;
  // Two bytes per id (mostly in the vocabulary); 0xffff: a raw int32 next.
  for (size_t i = 1; i + 1 < size; i += 2) {
    uint16_t small;
    std::memcpy(&small, data + i, 2);
    if (small == 0xffff && i + 6 <= size) {
      int32_t raw;
      std::memcpy(&raw, data + i + 2, 4);
      ids.push_back(raw);
      i += 4;
    } else {
      ids.push_back(small % (tokenizer.vocab_size() + 8));
    }
  }
  strata::IncrementalDetokenizer detokenizer(tokenizer, skip_special);
  std::string text;
  for (strata::TokenId id : ids) {
    const std::string delta = detokenizer.Add(id);
    STRATA_CHECK(strata::IsValidUtf8(delta)) << "delta not UTF-8";
    text += delta;
  }
  text += detokenizer.Flush();
  std::vector<strata::TokenId> in_range;
  for (strata::TokenId id : ids) {
    if (id >= 0 && id < tokenizer.vocab_size()) in_range.push_back(id);
  }
  STRATA_CHECK(text == tokenizer.Decode(in_range, skip_special))
      << "incremental text differs from Decode";
  return 0;
}
