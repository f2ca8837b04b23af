// Finds stop strings in streamed text.
//
// Text arrives in deltas (from IncrementalDetokenizer). A stop string may span
// deltas, so the matcher holds back the longest suffix of the text seen so
// far that is a proper prefix of some stop string; everything before it can
// be emitted. When several stop strings occur, the one that ends first wins
// (then the one that starts first): that is the one a character-by-character
// stream would complete first, so the result never depends on how the text
// was cut into deltas.
//
// Threading: one instance per sequence, used by one thread at a time.
#ifndef STRATA_TEXT_STOP_STRING_MATCHER_H_
#define STRATA_TEXT_STOP_STRING_MATCHER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

class StopStringMatcher {
 public:
  // Empty stop strings are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string text;  // safe to emit now
    bool stopped =
        false;  // a stop string was found; text is everything before it
    std::string matched;  // which stop string
  };

  // Adds a delta. After a stop, further calls return {"", true, matched}.
  Result Add(std::string_view delta);

  // The held-back text when generation ends without a stop ("" after a stop).
  std::string Flush();

  bool stopped() const { return stopped_; }

 private:
  // Length of the longest suffix of held_ that is a proper prefix of a stop
  // string.
  size_t HeldBackLength() const;

  std::vector<std::string> stop_strings_;
  std::string held_;  // text not yet emitted; shorter than the longest stop
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace strata

#endif  // STRATA_TEXT_STOP_STRING_MATCHER_H_
