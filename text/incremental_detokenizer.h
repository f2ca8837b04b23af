// Turns a stream of generated token ids into text deltas.
//
// A byte-level token can end in the middle of a UTF-8 character (an emoji is
// often 2-4 tokens), so the detokenizer keeps the trailing bytes of an
// unfinished character until a later token completes it. Ill-formed bytes
// become U+FFFD exactly as Tokenizer::Decode replaces them, so the
// concatenation of every Add() result and Flush() equals
// tokenizer.Decode(all_ids, skip_special_tokens), and every delta is
// well-formed UTF-8 on its own.
//
// Threading: one instance per sequence, used by one thread at a time; the
// Tokenizer is borrowed and must outlive it.
#ifndef STRATA_TEXT_INCREMENTAL_DETOKENIZER_H_
#define STRATA_TEXT_INCREMENTAL_DETOKENIZER_H_

#include <string>

#include "common/token_id.h"
#include "text/tokenizer.h"

namespace strata {

class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer,
                                  bool skip_special_tokens = true);

  // The text newly completed by `id` (maybe ""). Special tokens add nothing
  // when skip_special_tokens; ids out of range add nothing.
  std::string Add(TokenId id);

  // At the end of the stream: the bytes of an unfinished character, as one
  // U+FFFD (or "" when nothing is pending). The detokenizer is then empty.
  std::string Flush();

  // Bytes held back waiting for the rest of a character (at most 3).
  size_t num_pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // the start of an unfinished UTF-8 sequence
};

}  // namespace strata

#endif  // STRATA_TEXT_INCREMENTAL_DETOKENIZER_H_
