// Sweep mode: one run per concurrency (closed loop) or request rate (open
// loop), collected into a CSV and plotted (throughput against latency) with
// gnuplot when it is installed.
#ifndef STRATA_BENCH_SWEEP_H_
#define STRATA_BENCH_SWEEP_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/load_runner.h"
#include "bench/metrics.h"

namespace strata::bench {

// Parses "1,2,4,8" (or "0.5, 1, inf" for rates). Every value must be > 0.
absl::StatusOr<std::vector<double>> ParseSweepValues(const std::string& list);

struct SweepPoint {
  LoadMode mode = LoadMode::kClosedLoop;
  int32_t concurrency = 0;  // closed loop: clients; open loop: cap (0 none)
  double request_rate = 0;  // open loop only (may be inf)
  BenchMetrics metrics;
};

// Header plus one row per point: mode, concurrency, request_rate, then every
// figure in MetricNames() order, then the failed-request count by code as
// one "CODE:n;CODE:n" field.
std::string SweepCsv(const std::vector<SweepPoint>& points);

// The gnuplot script that draws `csv_path` into `png_path`: TTFT, TPOT and
// E2EL (median and p99) against output token throughput, one point per run,
// each labelled with its `label_column` value ("concurrency" or
// "request_rate").
std::string SweepGnuplotScript(const std::string& csv_path,
                               const std::string& png_path,
                               const std::string& label_column);

// Finds an executable named `program` (or a path) on PATH; "" when absent.
std::string FindExecutable(const std::string& program);

// Writes the script next to the PNG (png_path + ".gp") and runs gnuplot on
// it (killed after 60 s). FAILED_PRECONDITION when gnuplot is not installed,
// so the caller can skip the plot with a clear message.
absl::Status PlotSweep(const std::string& gnuplot, const std::string& csv_path,
                       const std::string& png_path,
                       const std::string& label_column = "concurrency");

}  // namespace strata::bench

#endif  // STRATA_BENCH_SWEEP_H_
