#include "bench/benchmark.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/sweep.h"
#include "nlohmann/json.hpp"

namespace strata::bench {
namespace {

using Json = nlohmann::ordered_json;

Json RateJson(double rate) {
  // JSON has no infinity; vLLM writes the string "inf".
  return std::isinf(rate) ? Json("inf") : Json(rate);
}

Json ConfigJson(const BenchmarkOptions& options, const v1::ModelInfo& info,
                const Workload& workload, const LoadRunner::RunOptions& run) {
  Json j;
  j["date"] =
      absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::LocalTimeZone());
  j["label"] = options.label;
  j["backend"] = "strata";
  j["target"] = options.runner.target;
  j["protocol"] = ProtocolName(options.runner.protocol);
  if (options.runner.protocol == Protocol::kHttp) {
    j["http_target"] = options.runner.http_target;
  }
  j["model_id"] = info.name();
  j["model_backend"] = info.backend();
  j["model_dtype"] = info.dtype();
  j["mode"] = LoadModeName(run.mode);
  j["max_concurrency"] = run.concurrency;
  j["request_rate"] = run.mode == LoadMode::kOpenLoop
                          ? RateJson(run.request_rate)
                          : Json("inf");
  j["burstiness"] = run.burstiness;
  j["num_prompts"] = run.num_requests;
  j["duration_limit_s"] = absl::ToDoubleSeconds(run.duration);
  j["num_warmup"] = options.num_warmup;
  j["workload"] = workload.Describe();
  j["seed"] = options.workload.seed;
  j["temperature"] = options.runner.temperature;
  j["ignore_eos"] = options.runner.ignore_eos;
  Json slo = Json::object();
  if (options.slo.ttft_ms > 0) slo["ttft"] = options.slo.ttft_ms;
  if (options.slo.tpot_ms > 0) slo["tpot"] = options.slo.tpot_ms;
  if (options.slo.e2el_ms > 0) slo["e2el"] = options.slo.e2el_ms;
  j["goodput_slo_ms"] = std::move(slo);
  return j;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status Validate(const BenchmarkOptions& options) {
  if (options.num_warmup < 0) {
    return absl::InvalidArgumentError("num_warmup must be >= 0");
  }
  if (options.sweep_values.empty() &&
      (!options.sweep_csv.empty() || !options.sweep_png.empty())) {
    return absl::InvalidArgumentError(
        "sweep_csv / sweep_png need a sweep list (--sweep)");
  }
  if (options.run.mode == LoadMode::kClosedLoop) {
    for (double value : options.sweep_values) {
      if (value != std::floor(value) || value > 100000) {
        return absl::InvalidArgumentError(absl::StrCat(
            "closed-loop sweep values are client counts (integers up to "
            "100000), got ",
            value));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BenchmarkOutcome> RunBenchmark(const BenchmarkOptions& options,
                                              std::ostream& out) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<LoadRunner>> runner =
      LoadRunner::Create(options.runner);
  if (!runner.ok()) return runner.status();
  absl::StatusOr<v1::ModelInfo> info = (*runner)->GetModelInfo();
  if (!info.ok()) return info.status();

  Workload::Options workload_options = options.workload;
  if (workload_options.max_token_id == 0) {
    workload_options.max_token_id = static_cast<int32_t>(info->vocab_size());
  }
  for (int32_t id : info->eos_token_ids()) {
    workload_options.excluded_token_ids.push_back(id);
  }
  if (info->has_bos_token_id()) {
    workload_options.excluded_token_ids.push_back(info->bos_token_id());
  }
  absl::StatusOr<std::unique_ptr<Workload>> workload =
      Workload::Create(workload_options);
  if (!workload.ok()) return workload.status();
  if (absl::Status s = (*workload)->CheckFits(info->context_length());
      !s.ok()) {
    return s;
  }
  out << "Target: " << options.runner.target;
  if (options.runner.protocol == Protocol::kHttp) {
    out << " (streams over HTTP at " << options.runner.http_target << ")";
  }
  out << "  model: " << info->name()
      << " (" << info->backend() << ", " << info->dtype() << ", vocab "
      << info->vocab_size() << ", context " << info->context_length() << ")\n"
      << "Workload: " << (*workload)->Describe() << "\n";

  if (options.num_warmup > 0) {
    LoadRunner::RunOptions warm;
    warm.mode = LoadMode::kClosedLoop;
    const int64_t clients =
        options.run.concurrency > 0 ? options.run.concurrency : 8;
    warm.concurrency = static_cast<int32_t>(
        std::clamp<int64_t>(clients, 1, options.num_warmup));
    warm.num_requests = options.num_warmup;
    warm.max_run_time = options.run.max_run_time;
    warm.first_index = kWarmupFirstIndex;
    warm.label = "warm-up";
    absl::StatusOr<LoadRunner::RunResult> result =
        (*runner)->Run(**workload, warm);
    if (!result.ok()) return result.status();
    const BenchMetrics metrics =
        ComputeMetrics(result->records, result->duration_s, Slo());
    out << absl::StrFormat("Warm-up: %d requests, %d failed, %.2f s\n",
                           result->records.size(), metrics.failed,
                           result->duration_s);
    if (metrics.completed == 0) {
      std::string first_error = result->abort_reason;
      for (const RequestRecord& r : result->records) {
        if (!r.success) {
          first_error = absl::StrCat(r.error_code, ": ", r.error_message);
          break;
        }
      }
      return absl::UnavailableError(
          absl::StrCat("every warm-up request failed (", first_error,
                       "); is the daemon serving?"));
    }
  }

  std::vector<LoadRunner::RunOptions> runs;
  if (options.sweep_values.empty()) {
    runs.push_back(options.run);
  } else {
    for (double value : options.sweep_values) {
      LoadRunner::RunOptions run = options.run;
      if (run.mode == LoadMode::kClosedLoop) {
        run.concurrency = static_cast<int32_t>(value);
      } else {
        run.request_rate = value;
      }
      runs.push_back(run);
    }
  }

  BenchmarkOutcome outcome;
  std::vector<SweepPoint> points;
  Json point_jsons = Json::array();
  for (size_t point = 0; point < runs.size(); ++point) {
    LoadRunner::RunOptions run = runs[point];
    // Each sweep point gets its own prompts, so that a point does not find
    // the previous point's prompts in the prefix cache.
    run.first_index = static_cast<int64_t>(point) << 32;
    run.label = run.mode == LoadMode::kClosedLoop
                    ? absl::StrCat("concurrency ", run.concurrency)
                    : absl::StrCat("rate ", run.request_rate);
    absl::StatusOr<LoadRunner::RunResult> result =
        (*runner)->Run(**workload, run);
    if (!result.ok()) return result.status();
    BenchMetrics metrics =
        ComputeMetrics(result->records, result->duration_s, options.slo);
    metrics.max_concurrent_requests = result->max_concurrent_requests;
    const std::string title =
        run.mode == LoadMode::kClosedLoop
            ? absl::StrCat("Closed loop, ", run.concurrency,
                           run.concurrency == 1 ? " client" : " clients")
            : absl::StrCat("Open loop, ",
                           std::isinf(run.request_rate)
                               ? std::string("all at once")
                               : absl::StrFormat("%g req/s", run.request_rate),
                           run.concurrency > 0
                               ? absl::StrCat(", max ", run.concurrency)
                               : "");
    out << FormatMetricsTable(metrics, title, options.slo);
    if (result->num_sent < run.num_requests) {
      out << "Sent " << result->num_sent << " of " << run.num_requests
          << " requests"
          << (result->aborted ? "" : " (the duration limit ended sending)")
          << ".\n";
    }
    Json json = ConfigJson(options, *info, **workload, run);
    json["num_sent"] = result->num_sent;
    json["aborted"] = result->aborted;
    json["abort_reason"] = result->abort_reason;
    json.update(MetricsToJson(metrics));
    if (options.save_detailed) json.update(RecordsToJson(result->records));
    point_jsons.push_back(std::move(json));
    points.push_back({run.mode, run.concurrency, run.request_rate, metrics});
    outcome.metrics.push_back(std::move(metrics));
    if (result->aborted) {
      outcome.aborted = true;
      outcome.abort_reason = result->abort_reason;
      out << "ABORTED: " << result->abort_reason << "\n";
      if (runs.size() > 1) out << "The sweep stops here.\n";
      break;
    }
  }

  if (!options.result_json.empty()) {
    Json json;
    if (options.sweep_values.empty()) {
      json = std::move(point_jsons[0]);
    } else {
      json["sweep"] = std::move(point_jsons);
    }
    if (absl::Status s = WriteFile(options.result_json, json.dump(2) + "\n");
        !s.ok()) {
      return s;
    }
    out << "Wrote " << options.result_json << "\n";
  }
  // The plot is drawn from the CSV, so a plot alone still writes one.
  const std::string csv_path =
      !options.sweep_csv.empty() || options.sweep_png.empty()
          ? options.sweep_csv
          : options.sweep_png + ".csv";
  if (!csv_path.empty()) {
    if (absl::Status s = WriteFile(csv_path, SweepCsv(points)); !s.ok()) {
      return s;
    }
    out << "Wrote " << csv_path << "\n";
  }
  if (!options.sweep_png.empty()) {
    const absl::Status plotted =
        PlotSweep(options.gnuplot, csv_path, options.sweep_png,
                  options.run.mode == LoadMode::kClosedLoop ? "concurrency"
                                                            : "request_rate");
    if (plotted.ok()) {
      out << "Wrote " << options.sweep_png << "\n";
    } else {
      out << "Plot skipped: " << plotted.message() << "\n";
    }
  }
  return outcome;
}

}  // namespace strata::bench
