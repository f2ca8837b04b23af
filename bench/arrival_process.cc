#include "bench/arrival_process.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace strata::bench {

absl::StatusOr<std::unique_ptr<ArrivalProcess>> ArrivalProcess::Create(
    const Options& options) {
  if (std::isnan(options.request_rate) || options.request_rate <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request rate must be > 0 (or inf), got ", options.request_rate));
  }
  if (!std::isfinite(options.burstiness) || options.burstiness <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("burstiness must be > 0, got ", options.burstiness));
  }
  return std::unique_ptr<ArrivalProcess>(new ArrivalProcess(options));
}

ArrivalProcess::ArrivalProcess(const Options& options)
    : infinite_(std::isinf(options.request_rate)),
      rng_(options.seed),
      // Gamma(shape k, scale theta) has mean k * theta = 1 / rate.
      gap_(options.burstiness,
           infinite_ ? 1.0
                     : 1.0 / (options.request_rate * options.burstiness)) {}

double ArrivalProcess::Next() {
  if (infinite_) return 0;
  // The first request goes at time zero; each later one one gap after the
  // previous (vLLM sends, then sleeps).
  const double arrival = now_s_;
  now_s_ += gap_(rng_);
  return arrival;
}

}  // namespace strata::bench
