// StopStringMatcher tests: stops inside one delta and across deltas,
// overlapping candidates, a stop at the very start, hold-back and flush, and
// independence from how the text is cut into deltas.
#include "text/stop_string_matcher.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

struct Streamed {
  std::string text;  // everything emitted, Flush() included when not stopped
  bool stopped = false;
  std::string matched;
};

Streamed StreamThrough(const std::vector<std::string>& stops,
                       const std::vector<std::string>& deltas) {
  StopStringMatcher matcher(stops);
  Streamed out;
  for (const std::string& delta : deltas) {
    StopStringMatcher::Result result = matcher.Add(delta);
    out.text += result.text;
    if (result.stopped) {
      out.stopped = true;
      out.matched = result.matched;
      return out;
    }
  }
  out.text += matcher.Flush();
  return out;
}

TEST(StopStringMatcherTest, NoStopStringsPassesEverythingThrough) {
  StopStringMatcher matcher({});
  StopStringMatcher::Result result = matcher.Add("hello");
  EXPECT_EQ(result.text, "hello");
  EXPECT_FALSE(result.stopped);
  EXPECT_EQ(matcher.Flush(), "");
  // Empty stop strings are ignored.
  StopStringMatcher empty_stop({""});
  EXPECT_EQ(empty_stop.Add("abc").text, "abc");
}

TEST(StopStringMatcherTest, StopInsideOneDelta) {
  StopStringMatcher matcher({"STOP"});
  StopStringMatcher::Result result = matcher.Add("hello STOP world");
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(result.text, "hello ");
  EXPECT_EQ(result.matched, "STOP");
  EXPECT_TRUE(matcher.stopped());
  // Later deltas are swallowed.
  result = matcher.Add("more");
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(result.text, "");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopStringMatcherTest, StopSpanningDeltasIsHeldBackUntilDecided) {
  StopStringMatcher matcher({"STOP"});
  StopStringMatcher::Result result = matcher.Add("hel");
  EXPECT_EQ(result.text, "hel");
  result = matcher.Add("lo ST");
  EXPECT_EQ(result.text, "lo ");  // "ST" may start "STOP"
  EXPECT_FALSE(result.stopped);
  result = matcher.Add("O");
  EXPECT_EQ(result.text, "");
  EXPECT_FALSE(result.stopped);
  result = matcher.Add("P and more");
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(result.text, "");
  EXPECT_EQ(result.matched, "STOP");
}

TEST(StopStringMatcherTest, HeldBackTextIsReleasedWhenItCannotMatch) {
  StopStringMatcher matcher({"STOP"});
  EXPECT_EQ(matcher.Add("ST").text, "");
  EXPECT_EQ(matcher.Add("ART").text, "START");
  EXPECT_EQ(matcher.Add("S").text, "");
  EXPECT_EQ(matcher.Add("TO").text, "");
  // Generation ends without the stop: Flush returns the held text.
  EXPECT_EQ(matcher.Flush(), "STO");
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopStringMatcherTest, StopAtTheVeryStart) {
  Streamed out = StreamThrough({"###"}, {"###", "after"});
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "");
  EXPECT_EQ(out.matched, "###");
  out = StreamThrough({"###"}, {"#", "#", "#"});
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "");
}

TEST(StopStringMatcherTest, OverlappingCandidatesTheOneEndingFirstWins) {
  // "bc" completes before "abcd" does.
  Streamed out = StreamThrough({"abcd", "bc"}, {"xabcd"});
  EXPECT_EQ(out.matched, "bc");
  EXPECT_EQ(out.text, "xa");
  // Same end: the longer (earlier starting) one.
  out = StreamThrough({"c", "abc"}, {"xabc"});
  EXPECT_EQ(out.matched, "abc");
  EXPECT_EQ(out.text, "x");
  // A prefix of one stop is another stop.
  out = StreamThrough({"abc", "ab"}, {"zab", "c"});
  EXPECT_EQ(out.matched, "ab");
  EXPECT_EQ(out.text, "z");
  // Self-overlapping stop string.
  out = StreamThrough({"aab"}, {"a", "a", "a", "b", "tail"});
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "a");
  // A near miss of a long stop followed by a short one.
  out = StreamThrough({"</answer>", "\n\n"}, {"x </ans", "\n\nmore"});
  EXPECT_EQ(out.matched, "\n\n");
  EXPECT_EQ(out.text, "x </ans");
}

TEST(StopStringMatcherTest, ResultDoesNotDependOnHowTextIsCut) {
  const std::vector<std::string> stops = {"abcd", "bcx", "cd", "dd"};
  for (const char* text_chars :
       {"xxabcxdd", "abcabcdd", "zbcdabc", "nothing here", "abcab"}) {
    const std::string text = text_chars;
    const Streamed whole = StreamThrough(stops, {text});
    // Every way of cutting `text` into deltas.
    const int cuts = static_cast<int>(text.size()) - 1;
    for (int mask = 0; mask < (1 << cuts); ++mask) {
      std::vector<std::string> deltas;
      size_t start = 0;
      for (int i = 0; i < cuts; ++i) {
        if (mask & (1 << i)) {
          deltas.push_back(text.substr(start, i + 1 - start));
          start = i + 1;
        }
      }
      deltas.push_back(text.substr(start));
      const Streamed cut = StreamThrough(stops, deltas);
      ASSERT_EQ(cut.text, whole.text) << text << " mask " << mask;
      ASSERT_EQ(cut.stopped, whole.stopped);
      ASSERT_EQ(cut.matched, whole.matched);
    }
  }
}

TEST(StopStringMatcherTest, MultiByteStopStrings) {
  Streamed out = StreamThrough({"世界"}, {"你好", "世", "界!"});
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "你好");
  out = StreamThrough({"世界"}, {"你好", "世", "人"});
  EXPECT_FALSE(out.stopped);
  EXPECT_EQ(out.text, "你好世人");
}

}  // namespace
}  // namespace strata
