// Request arrival times of an open-loop load: a Poisson process (burstiness
// 1), or more generally gamma-distributed inter-arrival gaps with shape
// `burstiness` and mean 1/rate (lower burstiness: burstier; higher: more
// regular), as vLLM's serving benchmark draws them. An infinite rate sends
// every request at time zero.
#ifndef STRATA_BENCH_ARRIVAL_PROCESS_H_
#define STRATA_BENCH_ARRIVAL_PROCESS_H_

#include <cstdint>
#include <memory>
#include <random>

#include "absl/status/statusor.h"

namespace strata::bench {

class ArrivalProcess {
 public:
  struct Options {
    double request_rate = 1.0;  // requests per second, > 0; may be +inf
    double burstiness = 1.0;    // gamma shape, > 0; 1 = Poisson
    uint64_t seed = 0;
  };

  static absl::StatusOr<std::unique_ptr<ArrivalProcess>> Create(
      const Options& options);

  // Seconds from the start of the run to the next arrival: 0 first, then
  // non-decreasing.
  // Not thread-safe (one dispatcher thread calls it).
  double Next();

 private:
  ArrivalProcess(const Options& options);

  bool infinite_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gap_;  // seconds between arrivals
  double now_s_ = 0;
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_ARRIVAL_PROCESS_H_
