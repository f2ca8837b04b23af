// Per-request measurements and the benchmark's figures computed from them.
//
// Definitions (the same as vLLM's serving benchmark, so results compare):
//   TTFT  time to first token: request sent -> first chunk carrying a token.
//   TPOT  time per output token, excluding the first:
//         (e2el - ttft) / (output_tokens - 1), for requests with > 1 token.
//   ITL   inter-token latency: the gap between consecutive token-carrying
//         chunks (one sample per chunk; a chunk with several tokens counts
//         once).
//   E2EL  end-to-end latency: request sent -> stream closed.
// Only successful requests contribute to latencies and token counts; failed
// ones are counted by error code. Throughputs divide by the run's duration
// (first request sent -> last request finished).
#ifndef STRATA_BENCH_METRICS_H_
#define STRATA_BENCH_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/stats.h"
#include "nlohmann/json.hpp"

namespace strata::bench {

// Error keys that are not gRPC status codes (a stream that ended OK but
// without a proper final chunk).
inline constexpr char kFinishReasonError[] = "FINISH_REASON_ERROR";
inline constexpr char kFinishReasonCancelled[] = "FINISH_REASON_CANCELLED";
inline constexpr char kIncompleteStream[] = "INCOMPLETE_STREAM";

struct RequestRecord {
  int64_t index = 0;  // workload index
  bool success = false;
  std::string error_code;     // gRPC code name or a k* key above; "" if ok
  std::string error_message;  // the first failure's message
  double start_s = 0;         // seconds from the run's start to sending
  double ttft_s = -1;         // -1 when no token arrived
  double e2el_s = 0;
  std::vector<double> itl_s;  // [token_chunks - 1] seconds
  int64_t prompt_tokens = 0;  // usage.prompt_tokens, else the known length
  int64_t output_tokens = 0;  // usage.completion_tokens, else ids received
  int64_t cached_prompt_tokens = 0;
  // Recursive models: loops run over all generated tokens (usage.mean_loops
  // times completion tokens).
  double loops_sum = 0;
  int32_t target_output_tokens = 0;  // max_tokens requested
  // The bench itself cancelled the request (at --max_run_s, when the send
  // window ended); such a request is neither completed nor failed.
  bool cancelled_by_bench = false;
};

// Service-level objective for goodput: a request is "good" when it succeeded
// and meets every limit set (a limit <= 0 is unset).
struct Slo {
  double ttft_ms = 0;
  double tpot_ms = 0;
  double e2el_ms = 0;
  bool any() const { return ttft_ms > 0 || tpot_ms > 0 || e2el_ms > 0; }
};

struct BenchMetrics {
  double duration = 0;  // seconds
  int64_t completed = 0;
  int64_t failed = 0;
  int64_t cancelled_by_bench = 0;  // in flight when the bench stopped
  int64_t total_input_tokens = 0;
  int64_t total_output_tokens = 0;
  int64_t cached_input_tokens = 0;
  // Mean loops per generated token (recursive models; 1 on a plain model).
  double mean_loops = 0;
  int64_t output_len_mismatches = 0;    // completed with != max_tokens tokens
  int64_t good_requests = 0;            // completed within the SLO
  double request_throughput = 0;        // completed / duration
  double request_goodput = 0;           // good_requests / duration
  double output_throughput = 0;         // output tokens / s
  double total_token_throughput = 0;    // (input + output) tokens / s
  int64_t max_concurrent_requests = 0;  // set by the runner
  Summary ttft_ms;
  Summary tpot_ms;
  Summary itl_ms;
  Summary e2el_ms;
  std::map<std::string, int64_t> errors_by_code;
};

BenchMetrics ComputeMetrics(const std::vector<RequestRecord>& records,
                            double duration_s, const Slo& slo);

// A flat JSON object with vLLM's field names (mean_ttft_ms, median_ttft_ms,
// std_ttft_ms, p50_ttft_ms, p90_ttft_ms, p99_ttft_ms, ... for ttft, tpot,
// itl, e2el) plus failed, errors_by_code and Strata's extras.
nlohmann::ordered_json MetricsToJson(const BenchMetrics& metrics);

// Per-request arrays under vLLM's names (input_lens, output_lens, ttfts,
// itls, e2els in seconds, errors), for --save_detailed.
nlohmann::ordered_json RecordsToJson(const std::vector<RequestRecord>& records);

// The names of the numeric figures MetricsToJson writes, in report order.
const std::vector<std::string>& MetricNames();

// True for figures where larger is better (throughputs, completed).
bool HigherIsBetter(const std::string& metric_name);

// The human-readable report, laid out like vLLM's.
std::string FormatMetricsTable(const BenchMetrics& metrics,
                               const std::string& title, const Slo& slo);

}  // namespace strata::bench

#endif  // STRATA_BENCH_METRICS_H_
