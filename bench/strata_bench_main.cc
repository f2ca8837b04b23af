// strata-bench: load generator for a running stratad. See docs/benchmarks.md.
//
//   strata-bench --target=127.0.0.1:50051 --concurrency=8 --num_requests=200
//   strata-bench --mode=open --request_rate=4 --duration_s=60
//       --num_requests=100000 --slo_ttft_ms=500 --slo_tpot_ms=50
//   strata-bench --sweep=1,2,4,8,16 --sweep_csv=s.csv --sweep_png=s.png
//   strata-bench --compare_a=a1.json,a2.json --compare_b=b1.json,b2.json
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench/benchmark.h"
#include "bench/compare.h"
#include "bench/sweep.h"
#include "common/logging.h"
#include "common/mutex_mode.h"

// Where and how.
ABSL_FLAG(std::string, target, "127.0.0.1:50051",
          "gRPC address of the daemon (loopback only unless "
          "--allow_remote_target).");
ABSL_FLAG(bool, allow_remote_target, false,
          "Allow a target that is not on this machine.");
ABSL_FLAG(std::string, protocol, "grpc",
          "grpc: stream over gRPC (--target); http: stream over the "
          "OpenAI-compatible HTTP API (Server-Sent Events) at --http_target. "
          "Model information always comes over gRPC from --target.");
ABSL_FLAG(std::string, http_target, "",
          "With --protocol=http: host:port of stratad's --http_port.");
ABSL_FLAG(int32_t, num_channels, 1,
          "gRPC connections to open (requests are spread round-robin).");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS: PEM CA bundle that signed stratad's certificate (turns TLS "
          "on). Applies to both protocols: gRPC to --target and, with "
          "--protocol=http, HTTPS to --http_target.");
ABSL_FLAG(std::string, tls_cert, "",
          "Mutual TLS: the bench's PEM certificate chain (with --tls_key); "
          "both protocols.");
ABSL_FLAG(std::string, tls_key, "",
          "Mutual TLS: the bench's PEM key; both protocols.");
ABSL_FLAG(std::string, tls_server_name, "",
          "TLS: name to check the server's certificate against instead of "
          "the host of --target (and of --http_target with --protocol=http; "
          "also sent as SNI there).");
// Load shape.
ABSL_FLAG(std::string, mode, "closed",
          "closed: --concurrency clients send back to back; open: requests "
          "arrive at --request_rate per second whatever the latency.");
ABSL_FLAG(int32_t, concurrency, 1,
          "closed loop: number of clients, each sending its next request "
          "when the previous one ends.");
ABSL_FLAG(int32_t, max_concurrency, 0,
          "open loop: cap on requests in flight (0 = no cap); arrivals wait "
          "for a free slot.");
ABSL_FLAG(std::string, request_rate, "inf",
          "open loop: requests per second (a number or inf = all at once).");
ABSL_FLAG(double, burstiness, 1.0,
          "open loop: gamma shape of inter-arrival gaps; 1 = Poisson, < 1 "
          "burstier, > 1 more regular.");
ABSL_FLAG(int64_t, num_requests, 200,
          "Requests to send in each measured run (an upper bound when "
          "--duration_s is set).");
ABSL_FLAG(double, duration_s, 0,
          "Stop sending after this many seconds (0 = only --num_requests "
          "bounds the run); requests in flight still finish.");
ABSL_FLAG(int64_t, num_warmup, 8,
          "Requests sent (closed loop, not measured) before measuring.");
ABSL_FLAG(double, max_run_s, 1800,
          "Hard limit per run in seconds: then requests in flight are "
          "cancelled and the run is reported as aborted.");
ABSL_FLAG(double, request_timeout_s, 120, "Deadline of each request.");
ABSL_FLAG(double, connect_timeout_s, 30,
          "How long to wait for the daemon to answer GetModelInfo.");
ABSL_FLAG(int32_t, abort_after_errors, 20,
          "Stop sending after this many consecutive failed requests "
          "(0 = never).");
// Workload.
ABSL_FLAG(std::string, workload, "random",
          "random (or fixed), shared_prefix, or dataset.");
ABSL_FLAG(int32_t, input_len, 128,
          "Prompt tokens (shared_prefix: tokens after the prefix).");
ABSL_FLAG(int32_t, output_len, 128, "Generated tokens per request.");
ABSL_FLAG(double, range_ratio, 0.0,
          "Lengths are uniform in [len*(1-r), len*(1+r)]; 0 = fixed.");
ABSL_FLAG(int32_t, num_prefixes, 4, "shared_prefix: distinct system prompts.");
ABSL_FLAG(int32_t, prefix_len, 256, "shared_prefix: tokens per system prompt.");
#ifndef STRATA_SOURCE_DIR
#define STRATA_SOURCE_DIR "."
#endif
ABSL_FLAG(std::string, dataset,
          STRATA_SOURCE_DIR "/bench/data/synthetic_chat.jsonl",
          "dataset: JSONL file, one {\"prompt\"|\"messages\", \"output_len\"} "
          "per line.");
ABSL_FLAG(int32_t, dataset_output_len, 0,
          "dataset: override every line's output_len (0 = use the file's).");
ABSL_FLAG(int32_t, min_token_id, 0, "Random prompts: smallest token id.");
ABSL_FLAG(int32_t, max_token_id, 0,
          "Random prompts: token ids below this (0 = the model's vocab_size).");
ABSL_FLAG(uint64_t, seed, 0, "Seed of prompts, lengths and arrival times.");
ABSL_FLAG(double, temperature, 0, "Sampling temperature (0 = greedy).");
ABSL_FLAG(int32_t, n, 1, "Choices per request (sampling.n).");
ABSL_FLAG(std::string, api_key, "",
          "API key sent as 'authorization: Bearer KEY' (stratad "
          "--api_keys_file); also read from $STRATA_API_KEY when empty.");
ABSL_FLAG(double, exit_threshold, -1,
          "Recursive models: early-exit confidence threshold sent with every "
          "request (1 = full depth; < 0: unset, the model's calibrated "
          "default applies).");
ABSL_FLAG(std::string, exit_confidence, "",
          "Recursive models: early-exit measure sent with every request: "
          "max_prob, margin, saturation or classifier (empty: unset, the "
          "model's default).");
ABSL_FLAG(bool, ignore_eos, true,
          "Keep generating past EOS so output lengths equal max_tokens.");
// Goodput.
ABSL_FLAG(double, slo_ttft_ms, 0, "Goodput SLO: TTFT limit in ms (0 = none).");
ABSL_FLAG(double, slo_tpot_ms, 0, "Goodput SLO: TPOT limit in ms (0 = none).");
ABSL_FLAG(double, slo_e2el_ms, 0,
          "Goodput SLO: end-to-end latency limit in ms (0 = none).");
// Output.
ABSL_FLAG(std::string, result_json, "", "Write the results to this JSON file.");
ABSL_FLAG(bool, save_detailed, false,
          "Include per-request arrays (input_lens, ttfts, itls, ...) in JSON.");
ABSL_FLAG(std::string, label, "", "Free text stored in the JSON.");
ABSL_FLAG(double, progress_s, 10,
          "Log progress to stderr this often in seconds (0 = never).");
// Sweep.
ABSL_FLAG(std::string, sweep, "",
          "Comma-separated concurrencies (closed) or request rates (open): "
          "one run each.");
ABSL_FLAG(std::string, sweep_csv, "", "Sweep: write one CSV row per run.");
ABSL_FLAG(std::string, sweep_png, "",
          "Sweep: plot latency against throughput (needs gnuplot; skipped "
          "with a message when it is absent).");
ABSL_FLAG(std::string, gnuplot, "gnuplot", "The gnuplot program to run.");
// Compare.
ABSL_FLAG(std::string, compare_a, "",
          "Compare mode: comma-separated result JSONs of configuration A.");
ABSL_FLAG(std::string, compare_b, "",
          "Compare mode: comma-separated result JSONs of configuration B.");
ABSL_FLAG(std::string, compare_a_label, "A", "Compare mode: name of A.");
ABSL_FLAG(std::string, compare_b_label, "B", "Compare mode: name of B.");
ABSL_FLAG(std::string, compare_json, "",
          "Compare mode: also write the comparison to this JSON file.");

namespace strata::bench {
namespace {

absl::Duration Seconds(double s) { return absl::Seconds(s); }

int Compare() {
  std::vector<nlohmann::json> sides[2];
  const std::string lists[2] = {absl::GetFlag(FLAGS_compare_a),
                                absl::GetFlag(FLAGS_compare_b)};
  for (int side = 0; side < 2; ++side) {
    for (absl::string_view path :
         absl::StrSplit(lists[side], ',', absl::SkipEmpty())) {
      absl::StatusOr<nlohmann::json> json = LoadResultJson(std::string(path));
      if (!json.ok()) {
        std::cerr << "strata-bench: " << json.status().message() << "\n";
        return 1;
      }
      sides[side].push_back(*std::move(json));
    }
  }
  absl::StatusOr<std::vector<ComparisonRow>> rows =
      CompareResults(sides[0], sides[1]);
  if (!rows.ok()) {
    std::cerr << "strata-bench: " << rows.status().message() << "\n";
    return 1;
  }
  std::cout << FormatComparison(*rows, absl::GetFlag(FLAGS_compare_a_label),
                                absl::GetFlag(FLAGS_compare_b_label),
                                sides[0].size(), sides[1].size());
  const std::string json_path = absl::GetFlag(FLAGS_compare_json);
  if (!json_path.empty()) {
    nlohmann::ordered_json json;
    json["a"] = absl::GetFlag(FLAGS_compare_a_label);
    json["b"] = absl::GetFlag(FLAGS_compare_b_label);
    json["rounds"] = sides[0].size();
    json["figures"] = ComparisonToJson(*rows);
    std::ofstream out(json_path);
    out << json.dump(2) << "\n";
    if (!out) {
      std::cerr << "strata-bench: cannot write " << json_path << "\n";
      return 1;
    }
  }
  return 0;
}

absl::StatusOr<BenchmarkOptions> OptionsFromFlags() {
  BenchmarkOptions o;
  o.runner.target = absl::GetFlag(FLAGS_target);
  o.runner.allow_remote_target = absl::GetFlag(FLAGS_allow_remote_target);
  o.runner.num_channels = absl::GetFlag(FLAGS_num_channels);
  o.runner.http_target = absl::GetFlag(FLAGS_http_target);
  o.runner.request_timeout = Seconds(absl::GetFlag(FLAGS_request_timeout_s));
  o.runner.connect_timeout = Seconds(absl::GetFlag(FLAGS_connect_timeout_s));
  o.runner.abort_after_consecutive_errors =
      absl::GetFlag(FLAGS_abort_after_errors);
  o.runner.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  o.runner.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  o.runner.n = absl::GetFlag(FLAGS_n);
  o.runner.api_key = absl::GetFlag(FLAGS_api_key);
  if (const char* env = std::getenv("STRATA_API_KEY");
      o.runner.api_key.empty() && env != nullptr) {
    o.runner.api_key = env;
  }
  if (const double t = absl::GetFlag(FLAGS_exit_threshold); t >= 0) {
    o.runner.exit_threshold = static_cast<float>(t);
  }
  if (const std::string c = absl::GetFlag(FLAGS_exit_confidence); !c.empty()) {
    v1::ExitConfidence value;
    if (!v1::ExitConfidence_Parse(
            absl::StrCat("EXIT_CONFIDENCE_", absl::AsciiStrToUpper(c)),
            &value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--exit_confidence: unknown measure '", c,
          "' (max_prob, margin, saturation or classifier)"));
    }
    o.runner.exit_confidence = value;
  }
  o.runner.progress_interval = Seconds(absl::GetFlag(FLAGS_progress_s));
  o.runner.tls = {.ca_file = absl::GetFlag(FLAGS_tls_ca),
                  .cert_file = absl::GetFlag(FLAGS_tls_cert),
                  .key_file = absl::GetFlag(FLAGS_tls_key),
                  .server_name = absl::GetFlag(FLAGS_tls_server_name)};

  absl::StatusOr<WorkloadKind> kind =
      ParseWorkloadKind(absl::GetFlag(FLAGS_workload));
  if (!kind.ok()) return kind.status();
  o.workload.kind = *kind;
  o.workload.input_len = absl::GetFlag(FLAGS_input_len);
  o.workload.output_len = absl::GetFlag(FLAGS_output_len);
  o.workload.range_ratio = absl::GetFlag(FLAGS_range_ratio);
  o.workload.num_prefixes = absl::GetFlag(FLAGS_num_prefixes);
  o.workload.prefix_len = absl::GetFlag(FLAGS_prefix_len);
  o.workload.dataset_path = absl::GetFlag(FLAGS_dataset);
  o.workload.dataset_output_len = absl::GetFlag(FLAGS_dataset_output_len);
  o.workload.min_token_id = absl::GetFlag(FLAGS_min_token_id);
  o.workload.max_token_id = absl::GetFlag(FLAGS_max_token_id);
  o.workload.seed = absl::GetFlag(FLAGS_seed);

  absl::StatusOr<Protocol> protocol =
      ParseProtocol(absl::GetFlag(FLAGS_protocol));
  if (!protocol.ok()) return protocol.status();
  o.runner.protocol = *protocol;
  absl::StatusOr<LoadMode> mode = ParseLoadMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok()) return mode.status();
  o.run.mode = *mode;
  o.run.concurrency = o.run.mode == LoadMode::kClosedLoop
                          ? absl::GetFlag(FLAGS_concurrency)
                          : absl::GetFlag(FLAGS_max_concurrency);
  absl::StatusOr<std::vector<double>> rate =
      ParseSweepValues(absl::GetFlag(FLAGS_request_rate));
  if (!rate.ok() || rate->size() != 1) {
    return absl::InvalidArgumentError(
        "--request_rate must be one number > 0 or inf");
  }
  o.run.request_rate = (*rate)[0];
  o.run.burstiness = absl::GetFlag(FLAGS_burstiness);
  o.run.num_requests = absl::GetFlag(FLAGS_num_requests);
  const double duration_s = absl::GetFlag(FLAGS_duration_s);
  const double max_run_s = absl::GetFlag(FLAGS_max_run_s);
  if (!(duration_s >= 0) || !(max_run_s > 0) || std::isinf(max_run_s)) {
    return absl::InvalidArgumentError(
        "--duration_s must be >= 0 and --max_run_s finite and > 0");
  }
  o.run.duration = Seconds(duration_s);
  o.run.max_run_time = Seconds(max_run_s);
  o.run.seed = absl::GetFlag(FLAGS_seed);
  o.num_warmup = absl::GetFlag(FLAGS_num_warmup);

  o.slo.ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);
  o.slo.tpot_ms = absl::GetFlag(FLAGS_slo_tpot_ms);
  o.slo.e2el_ms = absl::GetFlag(FLAGS_slo_e2el_ms);

  if (const std::string sweep = absl::GetFlag(FLAGS_sweep); !sweep.empty()) {
    absl::StatusOr<std::vector<double>> values = ParseSweepValues(sweep);
    if (!values.ok()) return values.status();
    o.sweep_values = *std::move(values);
  }
  o.result_json = absl::GetFlag(FLAGS_result_json);
  o.save_detailed = absl::GetFlag(FLAGS_save_detailed);
  o.sweep_csv = absl::GetFlag(FLAGS_sweep_csv);
  o.sweep_png = absl::GetFlag(FLAGS_sweep_png);
  o.gnuplot = absl::GetFlag(FLAGS_gnuplot);
  o.label = absl::GetFlag(FLAGS_label);
  return o;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  strata::UseReleaseMutexMode();
  absl::FlagsUsageConfig usage_config;
  // --help lists this tool's flags (not every library's).
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "strata_bench_main");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "drives a running stratad with streaming requests and reports "
      "throughput and latency.\n"
      "  strata-bench [--target=127.0.0.1:50051] [--mode=closed "
      "--concurrency=N | --mode=open --request_rate=R] [--num_requests=N]\n"
      "  strata-bench --sweep=1,2,4,8 --sweep_csv=out.csv --sweep_png=out.png\n"
      "  strata-bench --compare_a=a.json,... --compare_b=b.json,...\n"
      "See docs/benchmarks.md.");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "strata-bench: unexpected argument '" << positional[1]
              << "' (flags are --name=value)\n";
    return 1;
  }
  if (!absl::GetFlag(FLAGS_compare_a).empty() ||
      !absl::GetFlag(FLAGS_compare_b).empty()) {
    return strata::bench::Compare();
  }
  absl::StatusOr<strata::bench::BenchmarkOptions> options =
      strata::bench::OptionsFromFlags();
  if (!options.ok()) {
    std::cerr << "strata-bench: " << options.status().message() << "\n";
    return 1;
  }
  absl::StatusOr<strata::bench::BenchmarkOutcome> outcome =
      strata::bench::RunBenchmark(*options, std::cout);
  if (!outcome.ok()) {
    std::cerr << "strata-bench: " << outcome.status() << "\n";
    return 1;
  }
  // 2: the results are written but a run stopped early (daemon failing).
  return outcome->aborted ? 2 : 0;
}
