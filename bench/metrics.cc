#include "bench/metrics.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::bench {
namespace {

// The latency families and how they are titled in the table.
struct Family {
  const char* key;    // "ttft"
  const char* label;  // "TTFT"
  const char* title;  // section header
  Summary BenchMetrics::*summary;
};

constexpr Family kFamilies[] = {
    {"ttft", "TTFT", "Time to First Token", &BenchMetrics::ttft_ms},
    {"tpot", "TPOT", "Time per Output Token (excl. 1st token)",
     &BenchMetrics::tpot_ms},
    {"itl", "ITL", "Inter-token Latency", &BenchMetrics::itl_ms},
    {"e2el", "E2EL", "End-to-end Latency", &BenchMetrics::e2el_ms},
};

// Statistic name prefixes in JSON order and their table labels.
constexpr std::pair<const char*, const char*> kStats[] = {
    {"mean", "Mean"}, {"median", "Median"}, {"std", "Std"},
    {"p50", "P50"},   {"p90", "P90"},       {"p99", "P99"},
};

double StatOf(const Summary& s, const std::string& stat) {
  if (stat == "mean") return s.mean;
  if (stat == "median") return s.median;
  if (stat == "std") return s.std;
  if (stat == "p50") return s.p50;
  if (stat == "p90") return s.p90;
  return s.p99;
}

double Tpot(const RequestRecord& r) {
  if (r.output_tokens <= 1 || r.ttft_s < 0) return 0;
  return (r.e2el_s - r.ttft_s) / static_cast<double>(r.output_tokens - 1);
}

std::string Line(const std::string& label, const std::string& value) {
  return absl::StrFormat("%-40s %s\n", label, value);
}

std::string Banner(const std::string& title, char fill) {
  const int width = 50;
  const int text = static_cast<int>(title.size());
  const int left = std::max(0, (width - text) / 2);
  const int right = std::max(0, width - text - left);
  return absl::StrCat(std::string(left, fill), title, std::string(right, fill),
                      "\n");
}

}  // namespace

BenchMetrics ComputeMetrics(const std::vector<RequestRecord>& records,
                            double duration_s, const Slo& slo) {
  BenchMetrics m;
  m.duration = duration_s;
  std::vector<double> ttfts, tpots, itls, e2els;  // seconds
  for (const RequestRecord& r : records) {
    if (r.cancelled_by_bench) {
      ++m.cancelled_by_bench;
      continue;
    }
    if (!r.success) {
      ++m.failed;
      ++m.errors_by_code[r.error_code.empty() ? "UNKNOWN" : r.error_code];
      continue;
    }
    ++m.completed;
    m.total_input_tokens += r.prompt_tokens;
    m.total_output_tokens += r.output_tokens;
    m.cached_input_tokens += r.cached_prompt_tokens;
    m.mean_loops += r.loops_sum;  // a sum until divided below
    if (r.target_output_tokens > 0 &&
        r.output_tokens != r.target_output_tokens) {
      ++m.output_len_mismatches;
    }
    if (r.ttft_s >= 0) ttfts.push_back(r.ttft_s);
    const double tpot = Tpot(r);
    if (r.output_tokens > 1) tpots.push_back(tpot);
    itls.insert(itls.end(), r.itl_s.begin(), r.itl_s.end());
    e2els.push_back(r.e2el_s);
    const bool good = (slo.ttft_ms <= 0 ||
                       (r.ttft_s >= 0 && r.ttft_s * 1e3 <= slo.ttft_ms)) &&
                      (slo.tpot_ms <= 0 || tpot * 1e3 <= slo.tpot_ms) &&
                      (slo.e2el_ms <= 0 || r.e2el_s * 1e3 <= slo.e2el_ms);
    if (good) ++m.good_requests;
  }
  m.mean_loops = m.total_output_tokens > 0
                     ? m.mean_loops / static_cast<double>(m.total_output_tokens)
                     : 0.0;
  if (duration_s > 0) {
    m.request_throughput = m.completed / duration_s;
    m.request_goodput = m.good_requests / duration_s;
    m.output_throughput = m.total_output_tokens / duration_s;
    m.total_token_throughput =
        (m.total_input_tokens + m.total_output_tokens) / duration_s;
  }
  m.ttft_ms = Summarize(std::move(ttfts), 1e3);
  m.tpot_ms = Summarize(std::move(tpots), 1e3);
  m.itl_ms = Summarize(std::move(itls), 1e3);
  m.e2el_ms = Summarize(std::move(e2els), 1e3);
  return m;
}

const std::vector<std::string>& MetricNames() {
  static const std::vector<std::string>* names = [] {
    auto* n = new std::vector<std::string>{
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "cached_input_tokens",
        "mean_loops",
        "output_len_mismatches",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_concurrent_requests",
    };
    for (const Family& family : kFamilies) {
      for (const auto& [stat, label] : kStats) {
        n->push_back(absl::StrCat(stat, "_", family.key, "_ms"));
      }
    }
    return n;
  }();
  return *names;
}

bool HigherIsBetter(const std::string& name) {
  return name == "completed" || name == "cached_input_tokens" ||
         name == "max_concurrent_requests" ||
         absl::EndsWith(name, "_throughput") || name == "request_goodput";
}

nlohmann::ordered_json MetricsToJson(const BenchMetrics& m) {
  nlohmann::ordered_json j;
  j["duration"] = m.duration;
  j["completed"] = m.completed;
  j["failed"] = m.failed;
  j["cancelled_by_bench"] = m.cancelled_by_bench;
  j["total_input_tokens"] = m.total_input_tokens;
  j["total_output_tokens"] = m.total_output_tokens;
  j["cached_input_tokens"] = m.cached_input_tokens;
  j["mean_loops"] = m.mean_loops;
  j["output_len_mismatches"] = m.output_len_mismatches;
  j["request_throughput"] = m.request_throughput;
  j["request_goodput"] = m.request_goodput;
  j["output_throughput"] = m.output_throughput;
  j["total_token_throughput"] = m.total_token_throughput;
  j["max_concurrent_requests"] = m.max_concurrent_requests;
  for (const Family& family : kFamilies) {
    const Summary& s = m.*family.summary;
    for (const auto& [stat, label] : kStats) {
      j[absl::StrCat(stat, "_", family.key, "_ms")] = StatOf(s, stat);
    }
  }
  j["errors_by_code"] = nlohmann::ordered_json::object();
  for (const auto& [code, count] : m.errors_by_code) {
    j["errors_by_code"][code] = count;
  }
  return j;
}

nlohmann::ordered_json RecordsToJson(
    const std::vector<RequestRecord>& records) {
  nlohmann::ordered_json input_lens = nlohmann::ordered_json::array();
  nlohmann::ordered_json output_lens = nlohmann::ordered_json::array();
  nlohmann::ordered_json ttfts = nlohmann::ordered_json::array();
  nlohmann::ordered_json itls = nlohmann::ordered_json::array();
  nlohmann::ordered_json e2els = nlohmann::ordered_json::array();
  nlohmann::ordered_json errors = nlohmann::ordered_json::array();
  for (const RequestRecord& r : records) {
    input_lens.push_back(r.prompt_tokens);
    output_lens.push_back(r.output_tokens);
    ttfts.push_back(r.ttft_s < 0 ? 0.0 : r.ttft_s);
    itls.push_back(r.itl_s);
    e2els.push_back(r.e2el_s);
    errors.push_back(r.success
                         ? std::string()
                         : absl::StrCat(r.error_code, ": ", r.error_message));
  }
  nlohmann::ordered_json j;
  j["input_lens"] = std::move(input_lens);
  j["output_lens"] = std::move(output_lens);
  j["ttfts"] = std::move(ttfts);
  j["itls"] = std::move(itls);
  j["e2els"] = std::move(e2els);
  j["errors"] = std::move(errors);
  return j;
}

std::string FormatMetricsTable(const BenchMetrics& m, const std::string& title,
                               const Slo& slo) {
  std::string out = Banner(absl::StrCat(" ", title, " "), '=');
  absl::StrAppend(
      &out, Line("Successful requests:", absl::StrCat(m.completed)),
      Line("Failed requests:", absl::StrCat(m.failed)),
      Line("Cancelled by the bench:", absl::StrCat(m.cancelled_by_bench)),
      Line("Benchmark duration (s):", absl::StrFormat("%.2f", m.duration)),
      Line("Total input tokens:", absl::StrCat(m.total_input_tokens)),
      Line("  of which prefix-cached:", absl::StrCat(m.cached_input_tokens)),
      Line("Total generated tokens:", absl::StrCat(m.total_output_tokens)),
      Line("Request throughput (req/s):",
           absl::StrFormat("%.2f", m.request_throughput)));
  if (slo.any()) {
    absl::StrAppend(&out, Line("Request goodput (req/s):",
                               absl::StrFormat("%.2f", m.request_goodput)));
  }
  absl::StrAppend(&out,
                  Line("Output token throughput (tok/s):",
                       absl::StrFormat("%.2f", m.output_throughput)),
                  Line("Total Token throughput (tok/s):",
                       absl::StrFormat("%.2f", m.total_token_throughput)),
                  Line("Peak concurrent requests:",
                       absl::StrCat(m.max_concurrent_requests)));
  for (const Family& family : kFamilies) {
    absl::StrAppend(&out, Banner(family.title, '-'));
    const Summary& s = m.*family.summary;
    for (const auto& [stat, label] : kStats) {
      if (std::string(stat) == "p50" || std::string(stat) == "std") continue;
      absl::StrAppend(&out,
                      Line(absl::StrCat(label, " ", family.label, " (ms):"),
                           absl::StrFormat("%.2f", StatOf(s, stat))));
    }
  }
  if (slo.any()) {
    absl::StrAppend(&out, Banner("Goodput SLO", '-'));
    if (slo.ttft_ms > 0) {
      absl::StrAppend(
          &out, Line("TTFT limit (ms):", absl::StrFormat("%g", slo.ttft_ms)));
    }
    if (slo.tpot_ms > 0) {
      absl::StrAppend(
          &out, Line("TPOT limit (ms):", absl::StrFormat("%g", slo.tpot_ms)));
    }
    if (slo.e2el_ms > 0) {
      absl::StrAppend(
          &out, Line("E2EL limit (ms):", absl::StrFormat("%g", slo.e2el_ms)));
    }
    absl::StrAppend(
        &out, Line("Requests within SLO:", absl::StrCat(m.good_requests)));
  }
  if (!m.errors_by_code.empty() || m.output_len_mismatches > 0) {
    absl::StrAppend(&out, Banner("Errors", '-'));
    for (const auto& [code, count] : m.errors_by_code) {
      absl::StrAppend(&out, Line(absl::StrCat(code, ":"), absl::StrCat(count)));
    }
    if (m.output_len_mismatches > 0) {
      absl::StrAppend(&out, Line("Output length != max_tokens:",
                                 absl::StrCat(m.output_len_mismatches)));
    }
  }
  absl::StrAppend(&out, std::string(50, '='), "\n");
  return out;
}

}  // namespace strata::bench
