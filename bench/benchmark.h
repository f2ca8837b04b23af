// One strata-bench invocation: connect, read the model's shape, build the
// workload, warm up, then run once or sweep, and report (table on `out`,
// JSON, and for sweeps CSV + PNG). strata_bench_main.cc only turns flags into
// BenchmarkOptions.
#ifndef STRATA_BENCH_BENCHMARK_H_
#define STRATA_BENCH_BENCHMARK_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/load_runner.h"
#include "bench/metrics.h"
#include "bench/workload.h"

namespace strata::bench {

struct BenchmarkOptions {
  LoadRunner::Options runner;
  // max_token_id 0: the model's vocab_size; the model's EOS/BOS ids are
  // added to excluded_token_ids.
  Workload::Options workload;
  // The measured run's shape (first_index is ignored: measured requests use
  // indices 0.. (sweep point k: k << 32 ..), warm-up ones indices from
  // kWarmupFirstIndex).
  LoadRunner::RunOptions run;
  int64_t num_warmup = 0;  // closed-loop requests sent before measuring
  Slo slo;
  // Empty: one run. Otherwise one run per value: concurrencies (closed
  // loop) or request rates (open loop).
  std::vector<double> sweep_values;
  std::string result_json;     // "" : no JSON
  bool save_detailed = false;  // per-request arrays in the JSON
  std::string sweep_csv;       // sweep only; "" : no CSV
  std::string sweep_png;       // sweep only; "" : no plot (CSV beside it
                               // as PNG.csv when sweep_csv is "")
  std::string gnuplot = "gnuplot";
  std::string label;  // free text copied into the JSON
};

// Warm-up prompts come from a distant index range so they do not seed the
// prefix cache with the measured prompts (dataset workloads wrap anyway).
inline constexpr int64_t kWarmupFirstIndex = int64_t{1} << 40;

struct BenchmarkOutcome {
  std::vector<BenchMetrics> metrics;  // [1] or [sweep points]
  bool aborted = false;               // some run stopped early (see the report)
  std::string abort_reason;
};

// Runs everything; fails on setup errors (bad options, unreachable daemon,
// a warm-up in which every request failed). Results and files are written
// even when a run was aborted.
absl::StatusOr<BenchmarkOutcome> RunBenchmark(const BenchmarkOptions& options,
                                              std::ostream& out);

}  // namespace strata::bench

#endif  // STRATA_BENCH_BENCHMARK_H_
