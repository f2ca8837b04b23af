// Minimal logging and invariant checks. Debian 12's abseil (20220623) predates
// absl/log, so Strata carries this small header instead.
//
//   STRATA_LOG(INFO) << "loaded " << n << " tensors";   // INFO, WARNING, ERROR
//   STRATA_CHECK(ptr != nullptr) << "context";  // invariant only, never input
//
// Lines go to stderr, one write per message so concurrent lines do not mix.
#ifndef STRATA_COMMON_LOGGING_H_
#define STRATA_COMMON_LOGGING_H_

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata::logging {

enum class Severity { kInfo, kWarning, kError, kFatal };

class LogMessage {
 public:
  LogMessage(Severity severity, const char* file, int line)
      : severity_(severity) {
    static constexpr char kLetters[] = {'I', 'W', 'E', 'F'};
    const char* base = file;
    for (const char* p = file; *p != '\0'; ++p) {
      if (*p == '/') base = p + 1;
    }
    stream_ << kLetters[static_cast<int>(severity)]
            << absl::FormatTime("%m%d %H:%M:%E6S", absl::Now(),
                                absl::LocalTimeZone())
            << ' ' << base << ':' << line << "] ";
  }
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  ~LogMessage() {
    stream_ << '\n';
    const std::string text = stream_.str();
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
    if (severity_ == Severity::kFatal) std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  Severity severity_;
  std::ostringstream stream_;
};

// Swallows the stream expression of a check that passed.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace strata::logging

#define STRATA_LOG_SEVERITY_INFO ::strata::logging::Severity::kInfo
#define STRATA_LOG_SEVERITY_WARNING ::strata::logging::Severity::kWarning
#define STRATA_LOG_SEVERITY_ERROR ::strata::logging::Severity::kError
#define STRATA_LOG_SEVERITY_FATAL ::strata::logging::Severity::kFatal

#define STRATA_LOG(severity)                                              \
  ::strata::logging::LogMessage(STRATA_LOG_SEVERITY_##severity, __FILE__, \
                                __LINE__)                                 \
      .stream()

#define STRATA_CHECK(condition)                                                \
  (condition)                                                                  \
      ? (void)0                                                                \
      : ::strata::logging::Voidify() &                                         \
            ::strata::logging::LogMessage(::strata::logging::Severity::kFatal, \
                                          __FILE__, __LINE__)                  \
                    .stream()                                                  \
                << "Check failed: " #condition " "

#endif  // STRATA_COMMON_LOGGING_H_
