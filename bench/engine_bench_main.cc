// strata-engine-bench: decode throughput of the engine alone (ModelRunner:
// no scheduler, no gRPC) on a model directory. For a recursive model it
// compares, side by side in alternating rounds, sequence-wise steps (every
// loop of a token in one step) with depth-wise steps (one loop of every
// sequence per step, the hidden state kept between steps); for a plain model
// it times the plain steps. Every sequence samples greedily at full depth.
// Prints tokens/s per round and the mean ratio; on a shared machine read
// the ratio (docs/benchmarks.md).
//
// --exit_cost (recursive models): the cost of the LM head and of an exit
// decision in loops, from sequence-wise steps timed side by side in
// alternating rounds: full depth without the head (no sampling), with it,
// and with an exit check of each measure after every early loop at a
// threshold no row reaches (so every row runs every loop); each the best of
// --rounds. h = (head and greedy sampling, paid once per token) / loop; a
// measure's check cost = (its step - the step with the head) per row and
// early boundary, in loops: the median over rounds of each round's paired
// difference (a difference of two best-of-rounds minima swung by several
// percent of a loop between runs), with the rounds' range. Beside it, the
// check timed inside the steps (ModelRunner::step_timings: the checks'
// planning, confidences and decisions, the exit logits for max_prob and
// margin) per row and boundary, over the loop per row of the same steps: a
// ratio of two timings of the same run rather than a small difference of
// two large ones, so it holds to a few percent of itself where the difference
// swings by several percent of a loop. Likewise h timed in the steps: the head
// and sampling per row over the loop per row of the same full-depth steps
// (ModelRunner::step_timings), the median of the rounds. Rows that exited
// anyway are printed.
//
// --exits=MEASURE[:THRESHOLD] (recursive models): decoding with early exits
// in per-loop steps, as served depth-wise batching runs it, against full
// depth in alternating rounds; prints the speed-up, the mean loops n, the
// cap (N + h) / (n + h) with h timed in the same round's full-depth steps,
// and the fraction of the cap the engine alone reaches (ExitRun below).
// The served figure (bench/recursive_benchmark.sh) set beside it says what
// the scheduler, the output path and the client cost on top.
//
// --exits=... --prompt_exits: the same for prompts (PromptExitRun below): a
// served request's prompt runs about as many loop rows as its output does
// at the benchmark's default lengths, and with stratad's --prompt_exits
// its tokens exit too.
//
// Usage: build/bin/strata-engine-bench --model=DIR [--sequences=32]
//            [--context=64] [--tokens=40] [--rounds=3] [--threads=0]
//            [--dtype=bf16] [--quantization=int8] [--int8_group_size=0]
//            [--exit_cost | --exits=classifier[:0.75] [--prompt_exits]]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/stats.h"
#include "common/mutex_mode.h"
#include "engine/backends/backend.h"
#include "engine/backends/backend_options.h"
#include "engine/exit_defaults.h"
#include "engine/exit_policy.h"
#include "engine/model_runner.h"
#include "engine/step.h"

ABSL_FLAG(std::string, model, "models/strata-recursive-tiny",
          "Model directory.");
ABSL_FLAG(int32_t, sequences, 32, "Sequences decoded together.");
ABSL_FLAG(int32_t, context, 64, "Prompt tokens per sequence.");
ABSL_FLAG(int32_t, tokens, 40, "Decode tokens timed per round and mode.");
ABSL_FLAG(int32_t, rounds, 3, "Rounds (each mode once per round).");
ABSL_FLAG(int32_t, threads, 0, "Kernel threads; 0 = one per core.");
ABSL_FLAG(std::string, dtype, "",
          "As stratad's --dtype (\"\" = the backend's default, bf16).");
ABSL_FLAG(std::string, quantization, "none",
          "As stratad's --quantization (none, int8, llm.int8).");
ABSL_FLAG(int32_t, int8_group_size, 0,
          "As stratad's --int8_group_size (0 = per output channel).");
ABSL_FLAG(bool, exit_cost, false,
          "Recursive models: measure the LM head and each exit measure's "
          "check in loops instead of the depth-wise comparison.");
ABSL_FLAG(std::string, exits, "",
          "Recursive models: MEASURE or MEASURE:THRESHOLD (the threshold "
          "defaults to the model's calibrated one). Decodes with early exits "
          "in per-loop steps, as the served depth-wise batching does, against "
          "full-depth steps in alternating rounds, and prints the engine's "
          "fraction of the cap (N + h) / (n + h).");
ABSL_FLAG(bool, prompt_exits, false,
          "With --exits: time prompts instead of decoding. Each round "
          "prefills every sequence's --context prompt tokens at full depth "
          "in one step and with exits token by token, one loop a step, as "
          "stratad's --prompt_exits runs them, and prints the fraction of "
          "the prompt's cap.");

namespace strata {
namespace {

constexpr int32_t kBlockSize = 16;

// Sorts `v` (not empty) and returns its median (the benchmark's own
// percentile, which at 50 averages the middle two of an even count).
double SortedMedian(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  return bench::Percentile(v, 50);
}

// --exit_cost: decode(loop_step, sample, exit) returns tokens/s.
template <typename Decode>
int ExitCost(Decode& decode, const ModelRunner& runner, int32_t loops,
             int32_t rounds, int64_t* early_exits) {
  const ExitConfidence kinds[] = {
      ExitConfidence::kMaxProb, ExitConfidence::kMargin,
      ExitConfidence::kSaturation, ExitConfidence::kClassifier};
  // A threshold no confidence of this model reaches in practice (max_prob,
  // margin and the classifier's sigmoid stay below it; a cosine of 1 would
  // mean the loop did nothing). Rows that exit anyway are reported.
  std::vector<ExitParams> params(4);
  for (int k = 0; k < 4; ++k) {
    params[k].confidence = kinds[k];
    params[k].threshold = 0.999999f;
  }
  // Seconds per token (one row) of the plain steps, the best round's (on a
  // shared machine the minimum is the least disturbed measurement).
  constexpr double kUnset = 1e30;
  double no_head = kUnset, head = kUnset;
  // Per measure, each round's check cost in loops, against that round's
  // own steps without and with the head (run just before it).
  std::vector<double> per_check[4];
  // Per measure, each round's check as timed inside its steps, over the
  // loop per row timed in the same steps.
  std::vector<double> timed_check[4];
  // Each round's loop, head and sampling per row (ns) and h, timed inside
  // the full-depth steps with the head.
  std::vector<double> timed_loop, timed_head, timed_sampling, timed_h;
  bool measured[4] = {true, true, true, true};
  int64_t exits[4] = {0, 0, 0, 0};
  for (int32_t round = 0; round < rounds; ++round) {
    const double round_no_head = 1.0 / decode(loops, false, nullptr);
    const StepTimings head_before = runner.step_timings();
    const double round_head = 1.0 / decode(loops, true, nullptr);
    const StepTimings head_after = runner.step_timings();
    timed_loop.push_back(head_after.loops.PerRowSince(head_before.loops));
    timed_head.push_back(head_after.head.PerRowSince(head_before.head));
    timed_sampling.push_back(
        head_after.sampling.PerRowSince(head_before.sampling));
    timed_h.push_back((timed_head.back() + timed_sampling.back()) /
                      timed_loop.back());
    no_head = std::min(no_head, round_no_head);
    head = std::min(head, round_head);
    for (int k = 0; k < 4; ++k) {
      if (!measured[k]) continue;
      const int64_t before = *early_exits;
      const StepTimings timed_before = runner.step_timings();
      const double tps = decode(loops, true, &params[k]);
      if (tps < 0) {
        std::printf("%s: not measured (the model has no classifier?)\n",
                    std::string(ExitConfidenceName(kinds[k])).c_str());
        measured[k] = false;
        continue;
      }
      per_check[k].push_back((1.0 / tps - round_head) / (loops - 1) /
                             (round_no_head / loops));
      const StepTimings timed = runner.step_timings();
      const double check =
          timed.exit_checks.PerRowSince(timed_before.exit_checks);
      const double loop = timed.loops.PerRowSince(timed_before.loops);
      if (check > 0 && loop > 0) timed_check[k].push_back(check / loop);
      exits[k] += *early_exits - before;
    }
  }
  const double loop = no_head / loops;  // seconds per row-loop
  const double h = (head - no_head) / loop;
  std::printf(
      "per row (best of %d rounds): loop %.2f us, LM head and greedy "
      "sampling %.2f us: h = %.3f loops\n",
      rounds, loop * 1e6, (head - no_head) * 1e6, h);
  // Medians of the rounds; h's own median (not the ratio of the medians).
  const double h_timed = SortedMedian(timed_h);
  std::printf(
      "timed in the steps (median of %d rounds): loop %.2f us, LM head %.2f "
      "us, sampling %.2f us per row: h = %.3f loops (rounds %.3f to %.3f)\n",
      rounds, SortedMedian(timed_loop) * 1e-3, SortedMedian(timed_head) * 1e-3,
      SortedMedian(timed_sampling) * 1e-3, h_timed, timed_h.front(),
      timed_h.back());
  for (int k = 0; k < 4; ++k) {
    if (!measured[k]) continue;
    const double median = SortedMedian(per_check[k]);
    std::printf(
        "exit check %-10s: %.4f loops per row and boundary (%.1f%% of a "
        "loop; rounds %.1f%% to %.1f%%)%s\n",
        std::string(ExitConfidenceName(kinds[k])).c_str(), median, 100 * median,
        100 * per_check[k].front(), 100 * per_check[k].back(),
        exits[k] > 0 ? absl::StrCat(" [", exits[k], " rows exited]").c_str()
                     : "");
  }
  for (int k = 0; k < 4; ++k) {
    if (!measured[k] || timed_check[k].empty()) continue;
    const double median = SortedMedian(timed_check[k]);
    std::printf(
        "exit check %-10s timed in the step: %.4f loops per row and boundary "
        "(%.2f%% of a loop; rounds %.2f%% to %.2f%%)\n",
        std::string(ExitConfidenceName(kinds[k])).c_str(), median, 100 * median,
        100 * timed_check[k].front(), 100 * timed_check[k].back());
  }
  return 0;
}

// What --exits needs of Main's set-up.
struct ExitRunSetup {
  ModelRunner* runner;
  std::span<const std::vector<int32_t>> tables;  // per sequence
  int32_t context;                               // prompt tokens
  int32_t tokens;                                // per sequence and round
  const SamplingParams* sampling;
};

// "loops A, head B, checks C, sampling D, propagated K/V E, rest F":
// microseconds per token of each timed part between `before` and `after`,
// and of the rest of the wall time (set-up, gathers, result handling).
std::string PerTokenParts(const StepTimings& before, const StepTimings& after,
                          int64_t tokens, double seconds) {
  // A part's microseconds per token between `before` and `after`.
  auto us = [&](StepTimings::Part StepTimings::*part) {
    return static_cast<double>((after.*part).nanoseconds -
                               (before.*part).nanoseconds) *
           1e-3 / static_cast<double>(tokens);
  };
  const double loops = us(&StepTimings::loops), head = us(&StepTimings::head),
               checks = us(&StepTimings::exit_checks),
               sampling = us(&StepTimings::sampling),
               propagation = us(&StepTimings::propagation);
  const double wall = seconds * 1e6 / static_cast<double>(tokens);
  return absl::StrFormat(
      "loops %.2f, head %.2f, checks %.2f, sampling %.2f, propagated K/V "
      "%.2f, rest %.2f",
      loops, head, checks, sampling, propagation,
      wall - loops - head - checks - sampling - propagation);
}

// "R.RRRx full depth at N.NNN loops, cap C.CCCx: F.F% of the cap (rounds
// L.L% to H.H%)": the medians of the rounds' figures and the range of their
// fractions of the cap (--exits and --prompt_exits; the recursive benchmark
// parses it). Sorts each vector.
std::string CapSummary(std::vector<double>& ratios,
                       std::vector<double>& mean_loops,
                       std::vector<double>& caps,
                       std::vector<double>& fractions) {
  const double fraction = SortedMedian(fractions);
  return absl::StrFormat(
      "%.3fx full depth at %.3f loops, cap %.3fx: %.1f%% of the cap (rounds "
      "%.1f%% to %.1f%%)",
      SortedMedian(ratios), SortedMedian(mean_loops), SortedMedian(caps),
      100 * fraction, 100 * fractions.front(), 100 * fractions.back());
}

// Runs a round's two modes, full depth first in even rounds and exits
// first in odd ones: on this VM the second of two runs back to back read
// 3-4% faster in paired served runs, which a fixed order would put into
// every round's ratio. False if either failed.
template <typename Full, typename Exits>
bool RunBothInTurn(int32_t round, Full& run_full, Exits& run_exits) {
  return round % 2 == 1 ? run_exits() && run_full() : run_full() && run_exits();
}

// --exits: each round decodes sequences x tokens tokens at full depth
// (decode(N): whole passes) and with early exits in per-loop steps (the
// order alternating between rounds), as
// the served depth-wise batching runs them: every step runs one loop of
// every sequence, a sequence whose token exits (or reaches the last loop)
// starts its next token at loop 0 in the next step, and the runner
// propagates the skipped loops' K/V. A lone sequence runs whole passes with
// its exits inside the step, as served. A sequence that has decoded `tokens`
// tokens starts again after the prompt (overwriting its cache entries, as
// the full-depth rounds do), so every step has every sequence in it. The
// speed-up over full depth is set against the cap (N + h) / (n + h) of the
// same round: n the mean loops its tokens ran, h the head and sampling per
// row over the loop per row of its full-depth steps (step timings). This is
// the engine alone: no scheduler, no output path, no client.
template <typename Decode>
int ExitRun(Decode& decode, const ExitRunSetup& setup, const ExitParams& params,
            int32_t rounds) {
  ModelRunner& r = *setup.runner;
  const int32_t loops = r.config().num_loops;
  const int32_t sequences = static_cast<int32_t>(setup.tables.size());
  const int64_t target = int64_t{sequences} * setup.tokens;
  // A lone sequence runs whole passes with its exits inside the step, as the
  // served scheduler runs one (docs/scheduler.md, "Whole passes otherwise").
  const bool whole_passes = sequences == 1;
  struct Position {
    int32_t decoded = 0;  // tokens this sequence finished
    int32_t loops_done = 0;
    TokenId input = 0;  // the token this sequence runs next
  };
  // Each round's figures.
  std::vector<double> ratios, caps, fractions, mean_loops, loop_ratio;
  for (int32_t round = 0; round < rounds; ++round) {
    StepTimings full_before, full_after;
    double full = 0;
    const int64_t full_tokens = target;  // decode() runs sequences x tokens
    auto run_full = [&] {
      full_before = r.step_timings();
      full = decode(loops, true, nullptr);
      full_after = r.step_timings();
      return full >= 0;
    };
    StepTimings exits_before, exits_after;
    int64_t finished = 0, loops_run = 0;
    double seconds = 0;
    auto run_exits = [&] {
      std::vector<Position> at(sequences);
      for (int32_t s = 0; s < sequences; ++s) at[s].input = 11 + s;
      exits_before = r.step_timings();
      const auto start = std::chrono::steady_clock::now();
      while (finished < target) {
        StepPlan plan;
        std::vector<TokenId> inputs(sequences);  // the items' spans read these
        for (int32_t s = 0; s < sequences; ++s) inputs[s] = at[s].input;
        for (int32_t s = 0; s < sequences; ++s) {
          WorkItem item;
          item.request_id = s + 1;
          item.tokens = std::span<const TokenId>(&inputs[s], 1);
          item.start_position = setup.context + at[s].decoded;
          item.block_table = setup.tables[s];
          item.loop_begin = at[s].loops_done;
          item.loop_end = whole_passes ? -1 : at[s].loops_done + 1;
          item.sample = true;
          item.sampling = setup.sampling;
          item.exit = &params;
          plan.items.push_back(item);
        }
        absl::StatusOr<StepResult> done = r.Execute(plan);
        if (!done.ok()) {
          std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
          return false;
        }
        for (int32_t s = 0; s < sequences; ++s) {
          const ItemResult& item = done->items[s];
          Position& p = at[s];
          if (item.exit_loop < 0) {  // between loops
            p.loops_done = item.loops_done;
            continue;
          }
          ++finished;
          loops_run += item.exit_loop + 1;
          p.loops_done = 0;
          p.input = item.sampled.has_value() ? item.sampled->token : p.input;
          if (++p.decoded == setup.tokens) p.decoded = 0;
        }
      }
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                              start)
                    .count();
      exits_after = r.step_timings();
      return true;
    };
    if (!RunBothInTurn(round, run_full, run_exits)) return 1;
    const double full_loop = full_after.loops.PerRowSince(full_before.loops);
    const double h = (full_after.head.PerRowSince(full_before.head) +
                      full_after.sampling.PerRowSince(full_before.sampling)) /
                     full_loop;
    const double with_exits = static_cast<double>(finished) / seconds;
    const double n = static_cast<double>(loops_run) / finished;
    const double cap = (loops + h) / (n + h);
    ratios.push_back(with_exits / full);
    caps.push_back(cap);
    fractions.push_back(ratios.back() / cap);
    mean_loops.push_back(n);
    loop_ratio.push_back(exits_after.loops.PerRowSince(exits_before.loops) /
                         full_loop);
    std::printf(
        "round %d: full depth %.0f tok/s, exits %.0f tok/s (%.3fx) at %.3f "
        "loops; h = %.3f, cap %.3fx: %.1f%% of the cap; a loop per row costs "
        "%.3fx full depth's\n",
        round, full, with_exits, ratios.back(), n, h, cap,
        100 * fractions.back(), loop_ratio.back());
    std::printf(
        "  us per token: full depth: %s; exits: %s\n",
        PerTokenParts(full_before, full_after, full_tokens,
                      static_cast<double>(full_tokens) / full)
            .c_str(),
        PerTokenParts(exits_before, exits_after, finished, seconds).c_str());
  }
  std::printf(
      "exits %s at %.4g, engine alone (median of %d rounds): %s; a loop per "
      "row costs %.3fx full depth's\n",
      std::string(ExitConfidenceName(params.confidence)).c_str(),
      params.threshold, rounds,
      CapSummary(ratios, mean_loops, caps, fractions).c_str(),
      SortedMedian(loop_ratio));
  return 0;
}

// --exits=... --prompt_exits: each round prefills every sequence's prompt
// (`context` tokens, different each round so that the exits differ) at
// full depth, all sequences in one step, and with exits as the scheduler
// sends a chunk under --prompt_exits (docs/scheduler.md): one item per
// token still running, one loop a step, every token but the last with the
// exit rule, the last running every loop and sampling; the order alternating
// between rounds. The cap is the loop rows saved, with the head: (full
// depth's loop rows + h) / (the exits' loop rows + h), h the head and
// sampling of the prompts' last tokens over a loop row, both timed in the
// full-depth step (ModelRunner::step_timings).
int PromptExitRun(ModelRunner& r, std::span<const std::vector<int32_t>> tables,
                  int32_t context, const SamplingParams& greedy,
                  const ExitParams& params, int32_t rounds) {
  const int32_t sequences = static_cast<int32_t>(tables.size());
  const int32_t vocab = r.config().vocab_size;
  std::vector<std::vector<TokenId>> prompts(
      sequences, std::vector<TokenId>(static_cast<size_t>(context)));
  auto elapsed_us = [](std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::micro>(
               std::chrono::steady_clock::now() - start)
        .count();
  };
  std::vector<double> ratios, caps, fractions, mean_loops;
  for (int32_t round = 0; round < rounds; ++round) {
    for (int32_t s = 0; s < sequences; ++s) {
      for (int32_t i = 0; i < context; ++i) {
        prompts[s][i] = (i * 53 + s * 101 + round * 7 + 5) % vocab;
      }
    }
    StepTimings full_before, full_after;
    double full_us = 0;
    auto run_full = [&] {
      StepPlan plan;
      for (int32_t s = 0; s < sequences; ++s) {
        WorkItem item;
        item.request_id = s + 1;
        item.tokens = prompts[s];
        item.block_table = tables[s];
        item.sample = true;
        item.sampling = &greedy;
        plan.items.push_back(item);
      }
      full_before = r.step_timings();
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<StepResult> done = r.Execute(plan);
      full_us = elapsed_us(start);
      full_after = r.step_timings();
      if (!done.ok()) {
        std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
        return false;
      }
      return true;
    };
    StepTimings exits_before, exits_after;
    double exits_us = 0;
    int32_t steps = 0;
    auto run_exits = [&] {
      // Per sequence: the loops its running tokens have done (they run
      // together), and which tokens are done.
      std::vector<int32_t> loops_done(sequences, 0);
      std::vector<std::vector<bool>> done(
          sequences, std::vector<bool>(static_cast<size_t>(context), false));
      std::vector<std::pair<int32_t, int32_t>> planned;  // (sequence, token)
      steps = 0;
      exits_before = r.step_timings();
      const auto start = std::chrono::steady_clock::now();
      for (;;) {
        StepPlan plan;
        planned.clear();
        for (int32_t s = 0; s < sequences; ++s) {
          for (int32_t i = 0; i < context; ++i) {
            if (done[s][i]) continue;
            WorkItem item;
            item.request_id = s + 1;
            item.tokens = std::span<const TokenId>(prompts[s]).subspan(i, 1);
            item.start_position = i;
            item.block_table = tables[s];
            item.loop_begin = loops_done[s];
            item.loop_end = loops_done[s] + 1;
            item.sample = i == context - 1;
            item.sampling = &greedy;
            if (!item.sample) item.exit = &params;
            plan.items.push_back(item);
            planned.push_back({s, i});
          }
        }
        if (planned.empty()) break;
        absl::StatusOr<StepResult> result = r.Execute(plan);
        if (!result.ok()) {
          std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
          return false;
        }
        ++steps;
        for (size_t j = 0; j < planned.size(); ++j) {
          const auto [s, i] = planned[j];
          const ItemResult& item = result->items[j];
          if (item.exit_loop >= 0) {
            done[s][i] = true;
          } else {
            loops_done[s] = item.loops_done;
          }
        }
      }
      exits_us = elapsed_us(start);
      exits_after = r.step_timings();
      return true;
    };
    if (!RunBothInTurn(round, run_full, run_exits)) return 1;
    const double loop_ns = full_after.loops.PerRowSince(full_before.loops);
    const double h = static_cast<double>(full_after.head.nanoseconds -
                                         full_before.head.nanoseconds +
                                         full_after.sampling.nanoseconds -
                                         full_before.sampling.nanoseconds) /
                     loop_ns;
    const double full_rows =
        static_cast<double>(full_after.loops.rows - full_before.loops.rows);
    const double exit_rows =
        static_cast<double>(exits_after.loops.rows - exits_before.loops.rows);
    const double cap = (full_rows + h) / (exit_rows + h);
    ratios.push_back(full_us / exits_us);
    caps.push_back(cap);
    fractions.push_back(ratios.back() / cap);
    mean_loops.push_back(exit_rows /
                         (static_cast<double>(sequences) * context));
    std::printf(
        "round %d: prompts at full depth %.0f us, with exits %.0f us in %d "
        "steps (%.3fx) at %.3f loops a token; cap %.3fx: %.1f%% of the cap\n",
        round, full_us, exits_us, steps, ratios.back(), mean_loops.back(), cap,
        100 * fractions.back());
    std::printf(
        "  us per prompt: full depth: %s; exits: %s\n",
        PerTokenParts(full_before, full_after, sequences, full_us * 1e-6)
            .c_str(),
        PerTokenParts(exits_before, exits_after, sequences, exits_us * 1e-6)
            .c_str());
  }
  std::printf(
      "prompt exits %s at %.4g, engine alone (median of %d rounds): "
      "%s\n",
      std::string(ExitConfidenceName(params.confidence)).c_str(),
      params.threshold, rounds,
      CapSummary(ratios, mean_loops, caps, fractions).c_str());
  return 0;
}

int Main() {
  ModelRunner::Options options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  absl::StatusOr<BackendOptions> backend = ParseBackendOptions(
      "cpu", absl::GetFlag(FLAGS_dtype), absl::GetFlag(FLAGS_quantization));
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
    return 2;
  }
  options.backend = *std::move(backend);
  options.backend.int8_group_size = absl::GetFlag(FLAGS_int8_group_size);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.block_size = kBlockSize;
  const int32_t sequences = absl::GetFlag(FLAGS_sequences);
  const int32_t context = absl::GetFlag(FLAGS_context);
  const int32_t tokens = absl::GetFlag(FLAGS_tokens);
  const int32_t blocks_per_seq = (context + tokens) / kBlockSize + 1;
  options.kv_cache_bytes = 512LL << 20;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(options);
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
    return 1;
  }
  ModelRunner& r = **runner;
  if (r.num_blocks() < sequences * blocks_per_seq) {
    std::fprintf(stderr, "KV pool too small for %d sequences\n", sequences);
    return 1;
  }
  const int32_t loops = r.config().num_loops;
  std::vector<std::vector<int32_t>> tables(sequences);
  for (int32_t s = 0; s < sequences; ++s) {
    for (int32_t b = 0; b < blocks_per_seq; ++b) {
      tables[s].push_back(s * blocks_per_seq + b);
    }
  }
  // A different prompt per sequence, so that with --exits their tokens,
  // and so their exits, differ as served requests' do (the other modes
  // decode a fixed token, for which the prompt hardly matters).
  std::vector<TokenId> prompt(context);
  for (int32_t s = 0; s < sequences; ++s) {  // prefill once, full depth
    for (int32_t i = 0; i < context; ++i) {
      prompt[i] = (i * 37 + s * 101 + 11) % r.config().vocab_size;
    }
    StepPlan plan;
    WorkItem item;
    item.request_id = s + 1;
    item.tokens = prompt;
    item.block_table = tables[s];
    plan.items.push_back(item);
    if (absl::StatusOr<StepResult> done = r.Execute(plan); !done.ok()) {
      std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
      return 1;
    }
  }
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<TokenId> token = {11};
  // Decodes `tokens` positions after the prompt (the same positions every
  // round: the cache entries are overwritten), `loop_step` loops per step.
  int64_t early_exits = 0;  // rows that exited in exit-cost runs
  auto decode = [&](int32_t loop_step, bool sample = true,
                    const ExitParams* exit = nullptr) -> double {
    const auto start = std::chrono::steady_clock::now();
    for (int32_t t = 0; t < tokens; ++t) {
      for (int32_t begin = 0; begin < loops; begin += loop_step) {
        StepPlan plan;
        for (int32_t s = 0; s < sequences; ++s) {
          WorkItem item;
          item.request_id = s + 1;
          item.tokens = token;
          item.start_position = context + t;
          item.block_table = tables[s];
          item.loop_begin = begin;
          item.loop_end = loop_step == loops ? -1 : begin + loop_step;
          item.sample = sample && begin + loop_step == loops;
          item.sampling = &greedy;
          item.exit = exit;
          plan.items.push_back(item);
        }
        absl::StatusOr<StepResult> done = r.Execute(plan);
        if (!done.ok()) {
          std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
          return -1.0;
        }
        for (const ItemResult& item : done->items) {
          early_exits += item.exit_loop >= 0 && item.exit_loop < loops - 1;
        }
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return static_cast<double>(tokens) * sequences / seconds;
  };
  std::printf("%s: %d loop(s), %d sequences x %d tokens after %d, %s\n",
              options.model_dir.c_str(), loops, sequences, tokens, context,
              r.backend().Description().c_str());
  if (absl::GetFlag(FLAGS_prompt_exits) &&
      (absl::GetFlag(FLAGS_exits).empty() || loops == 1)) {
    std::fprintf(stderr,
                 "--prompt_exits: needs --exits and a recursive model\n");
    return 2;
  }
  decode(loops);  // warm-up
  if (const std::string exits = absl::GetFlag(FLAGS_exits);
      !exits.empty() && loops > 1) {
    const std::vector<std::string> parts = absl::StrSplit(exits, ':');
    absl::StatusOr<ExitConfidence> kind = ParseExitConfidence(parts[0]);
    absl::StatusOr<ExitDefaults> defaults =
        LoadExitDefaults(options.model_dir, r.config());
    ExitParams params;
    if (!kind.ok() || !defaults.ok() || parts.size() > 2 ||
        (parts.size() == 2 && !absl::SimpleAtof(parts[1], &params.threshold))) {
      std::fprintf(stderr, "--exits=%s: %s\n", exits.c_str(),
                   !kind.ok()       ? kind.status().ToString().c_str()
                   : !defaults.ok() ? defaults.status().ToString().c_str()
                                    : "expected MEASURE or MEASURE:THRESHOLD");
      return 2;
    }
    params.confidence = *kind;
    if (parts.size() == 1) params.threshold = defaults->DefaultThreshold(*kind);
    if (absl::Status valid = ValidateExitParams(params, loops); !valid.ok()) {
      std::fprintf(stderr, "--exits=%s: %s\n", exits.c_str(),
                   valid.ToString().c_str());
      return 2;
    }
    if (absl::GetFlag(FLAGS_prompt_exits)) {
      return PromptExitRun(r, tables, context, greedy, params,
                           absl::GetFlag(FLAGS_rounds));
    }
    const ExitRunSetup setup{&r, tables, context, tokens, &greedy};
    return ExitRun(decode, setup, params, absl::GetFlag(FLAGS_rounds));
  }
  if (absl::GetFlag(FLAGS_exit_cost) && loops > 1) {
    return ExitCost(decode, r, loops, absl::GetFlag(FLAGS_rounds),
                    &early_exits);
  }
  double ratio_sum = 0.0;
  const int32_t rounds = absl::GetFlag(FLAGS_rounds);
  for (int32_t round = 0; round < rounds; ++round) {
    const double seq = decode(loops);
    if (seq < 0) return 1;
    if (loops == 1) {
      std::printf("round %d: %.0f tok/s\n", round, seq);
      continue;
    }
    const double depth = decode(1);
    if (depth < 0) return 1;
    ratio_sum += depth / seq;
    std::printf(
        "round %d: sequence-wise %.0f tok/s, depth-wise %.0f tok/s "
        "(%.3fx)\n",
        round, seq, depth, depth / seq);
  }
  if (loops > 1 && rounds > 0) {
    std::printf("mean depth-wise / sequence-wise: %.3fx\n", ratio_sum / rounds);
  }
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  strata::UseReleaseMutexMode();  // as stratad runs the engine
  absl::ParseCommandLine(argc, argv);
  return strata::Main();
}
