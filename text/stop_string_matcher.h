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
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

class StopStringMatcher {
 public:
  // The stop strings of a request, read-only, shared by the matchers of all
  // its choices (one copy per request however many choices it has).
  using StopStrings = std::shared_ptr<const std::vector<std::string>>;

  // Empty stop strings are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);
  // A matcher sharing `stop_strings` (from Share(); null = no stop
  // strings). A factory, not a constructor, so that a braced list of
  // strings still means the vector.
  static StopStringMatcher Sharing(StopStrings stop_strings);

  // Drops empty strings; the result can be shared by many matchers.
  static StopStrings Share(std::vector<std::string> stop_strings);

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
  // The stop strings it looks for (shared with other matchers when built
  // from one Share()).
  const StopStrings& stop_strings() const { return stop_strings_; }

 private:
  // Length of the longest suffix of held_ that is a proper prefix of a stop
  // string.
  size_t HeldBackLength() const;

  StopStrings stop_strings_;  // never null
  std::string held_;  // text not yet emitted; shorter than the longest stop
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace strata

#endif  // STRATA_TEXT_STOP_STRING_MATCHER_H_
