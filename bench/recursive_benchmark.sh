#!/usr/bin/env bash
# Recursive-model benchmark (docs/recursive-models.md, "Benchmark"): one
# closed-loop workload through stratad at 1, 8 and 32 concurrent clients, per
# exit point (measure:threshold) of POINTS:
#   seqwise            sequence-wise batching, full depth (the baseline)
#   seqwise_M_T        sequence-wise, early exit with measure M at T
#   depthwise          depth-wise batching, full depth
#   depthwise_M_T      depth-wise, early exit with measure M at T
# T "default" sends no threshold (the model's calibrated one,
# config.json "exit_thresholds"); a full-depth row sends threshold 1.
#
# Besides tokens/s it prints the cap an exit point can reach at the mean
# loops n it ran: cap = (N + h) / (n + h), N the model's loops and h the LM
# head's cost in loops (with greedy sampling), measured by
# `strata-engine-bench --exit_cost` in the same run, timed inside the steps
# (the head runs once per token whatever its depth, so skipping
# loops saves at most this); and the fraction of it achieved:
# (depth-wise with exits / sequence-wise full depth) / cap. The cap leaves
# out what serving costs per token besides the model (scheduling, results,
# streaming, the client on the same cores): F = 1 / (sequence-wise full-depth
# tok/s) - (N L + H), with the engine's own loop L and head H per row
# measured at the same batch size; the served cap (N L + H + F) / (n L + H
# + F) is printed beside, with the fraction of it achieved. The last column
# is the engine alone with the point's exits at the concurrency's batch size
# (`strata-engine-bench --exits`, per-loop steps against full depth over the
# workload's positions, its own n and h): what is left of the cap before
# scheduling, streaming and the client take their share. Quality per point
# (held-out perplexity with exits, its increase over full depth, teacher-
# forced mean loops) comes from tools/recursive/quality.py unless QUALITY=0.
#
# PROMPT_EXITS=1 (the default; KV_FILL=propagate only) leaves stratad's
# --prompt_exits on: the rows with exits apply them to prompt tokens too,
# the rule the quality columns measure; 0 starts both daemons with
# --prompt_exits=false, every prompt token at full depth, as before
# 2026-12-06 (the cap counts generated tokens only either way).
#
# ROUNDS (default 5) repeats the whole run that many times and reports each
# row's median (tok/s) and the median of each round's ratio. A run is
# clients x REQUESTS_PER_CLIENT (default 8) requests, at least MIN_REQUESTS
# (default 96): with the default 64-token outputs a run of 24 requests (the
# defaults before 2026-12-07) lasted 0.2 s at 8 clients, and single rounds
# of the same row read 77-114% of the cap. Both daemons are up, on PORT and
# PORT+1, and a ratio's two runs follow each other, so a drift of the
# machine's speed falls on both sides: full depth runs on the sequence-wise
# daemon and at once on the depth-wise one; each point runs a sequence-wise
# full-depth run of its own (seqwise_beside_*, the denominator of its
# fraction of the cap), depth-wise with its exits, then sequence-wise with
# them. Even rounds reverse the order, so no side always runs second. (Until
# 2026-12-07 every point shared the first row's sequence-wise run, up to
# seven runs and 15 s earlier: over 30 runs of the script, rounds of a ratio
# of runs apart spread twice as much, a coefficient of variation of 4-6%
# against 2.5-3% for the full-depth pair that ran side by side.)
#
# Usage: bench/recursive_benchmark.sh [MODEL_DIR] [OUT_DIR]
# Env: ROUNDS=5, REQUESTS_PER_CLIENT=8, MIN_REQUESTS=96, CONCURRENCY="1 8 32",
# POINTS="max_prob:default margin:default classifier:default max_prob:0.2",
# OUTPUT_LEN=64, INPUT_LEN=64, KV_FILL=propagate, PROMPT_EXITS=1, QUALITY=1,
# HELDOUT=/tmp/kjv/heldout.txt (tools/train/prepare_corpus.py --out-dir
# /tmp/kjv), QUALITY_WINDOWS=8.
# Needs build/bin/{stratad,strata-bench,strata-engine-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/strata-recursive-tiny}
out=${2:-/tmp/strata-recursive-bench}
mkdir -p "$out"
port=${STRATA_BENCH_PORT:-50581}
concurrency=${CONCURRENCY:-1 8 32}
output_len=${OUTPUT_LEN:-64}
input_len=${INPUT_LEN:-64}
kv_fill=${KV_FILL:-propagate}
prompt_exit_flags=()  # stratad's default: on under propagate, off otherwise
if [[ "${PROMPT_EXITS:-1}" != 1 && "$kv_fill" == propagate ]]; then
  prompt_exit_flags=(--prompt_exits=false)
fi
points=${POINTS:-max_prob:default margin:default classifier:default max_prob:0.2}
quality=${QUALITY:-1}
heldout=${HELDOUT:-/tmp/kjv/heldout.txt}
quality_windows=${QUALITY_WINDOWS:-8}
rounds=${ROUNDS:-5}
per_client=${REQUESTS_PER_CLIENT:-8}  # requests per run: clients x this,
min_requests=${MIN_REQUESTS:-96}      # and at least this many

# h, the LM head in loops, from the engine alone, at the workload's mean
# context during decoding (a loop's attention grows with it; the head's
# cost does not).
build/bin/strata-engine-bench --model="$model" --exit_cost --rounds=5 \
  --sequences=32 --context=$((input_len + output_len / 2)) --tokens=24 \
  >"$out/exit_cost.txt" 2>&1
cat "$out/exit_cost.txt" >&2
# The engine's own cost per row of a loop and of the head at each
# concurrency's batch size, for the served cap below (32 rows: the run above).
for c in $concurrency; do
  if [[ "$c" == 32 ]]; then
    cp "$out/exit_cost.txt" "$out/exit_cost_c$c.txt"
    continue
  fi
  build/bin/strata-engine-bench --model="$model" --exit_cost --rounds=3 \
    --sequences="$c" --context=$((input_len + output_len / 2)) --tokens=24 \
    >"$out/exit_cost_c$c.txt" 2>&1
done

# The engine alone with each point's exits at each concurrency's batch size
# (strata-engine-bench --exits: per-loop steps against full depth, the
# served workload's positions), for the "engine alone" column: what the
# engine reaches of the cap before scheduling, streaming and the client.
# It propagates skipped loops' K/V, so only for KV_FILL=propagate.
if [[ "$kv_fill" == propagate ]]; then
  for c in $concurrency; do
    for p in $points; do
      m=${p%%:*} t=${p##*:}
      exits_flag=$m
      [[ "$t" != default ]] && exits_flag="$m:$t"
      build/bin/strata-engine-bench --model="$model" --exits="$exits_flag" \
        --rounds=7 --sequences="$c" --context="$input_len" \
        --tokens="$output_len" >"$out/engine_exits_${m}_${t}_c$c.txt" 2>&1
    done
  done
fi

bench() {  # bench PORT NAME CLIENTS MEASURE THRESHOLD ROUND (THRESHOLD "default": unset)
  local port=$1 name=$2 clients=$3 measure=$4 threshold=$5 round=$6
  local requests=$((clients * per_client > min_requests ? clients * per_client : min_requests))
  # A warm-up at the run's concurrency: the first run at a concurrency on a
  # fresh daemon read about 5% slower than the next three with 2 warm-up
  # requests (8 clients), and in line with them with 8.
  local warmup=$((clients > 2 ? clients : 2))
  local exit_flags=(--exit_confidence="$measure")
  if [[ "$threshold" != default ]]; then
    exit_flags+=(--exit_threshold="$threshold")
  fi
  build/bin/strata-bench --target="127.0.0.1:$port" --connect_timeout_s=60 \
    --mode=closed --concurrency="$clients" --num_requests="$requests" \
    --num_warmup="$warmup" --ignore_eos --seed=11 --max_run_s=900 \
    --workload=random --input_len="$input_len" --output_len="$output_len" \
    --range_ratio=0.5 "${exit_flags[@]}" --label="$name" \
    --result_json="$out/$name-c$clients-r$round.json" \
    >"$out/$name-c$clients-r$round.txt" 2>&1
}

start() {  # start MODE PORT: a daemon in the background, a child of this
  # shell (not of a $(...) subshell), so that `wait` below waits for it to
  # exit before the next round binds the same ports; its pid is in $!.
  build/bin/stratad --model="$model" --port="$2" --loop_batching="$1" \
    --kv_fill="$kv_fill" --enable_prefix_caching=false \
    "${prompt_exit_flags[@]}" >>"$out/stratad-$1.log" 2>&1 &
}

# Both daemons run side by side (an idle one costs nothing: its threads
# sleep), and each row runs on one and then the other, so the two figures of
# a row are seconds apart: this VM's speed drifts by 20-30% from minute to
# minute, which daemons run one after the other would fold into the ratio.
for round in $(seq "$rounds"); do
  start sequencewise "$port"
  seq_pid=$!
  start depthwise "$((port + 1))"
  depth_pid=$!
  for c in $concurrency; do
    # Full depth: sequence-wise beside depth-wise.
    if ((round % 2 == 1)); then
      bench "$port" seqwise "$c" max_prob 1 "$round"
    fi
    bench "$((port + 1))" depthwise "$c" max_prob 1 "$round"
    if ((round % 2 == 0)); then
      bench "$port" seqwise "$c" max_prob 1 "$round"
    fi
    # Each point: depth-wise with its exits between a sequence-wise
    # full-depth run (the denominator of its fraction of the cap, so the two
    # are seconds apart, not a whole row of points) and sequence-wise with
    # the same exits; even rounds reverse the three.
    for p in $points; do
      m=${p%%:*} t=${p##*:}
      tag="${m}_$t"
      if ((round % 2 == 1)); then
        bench "$port" "seqwise_beside_$tag" "$c" "$m" 1 "$round"
      else
        bench "$port" "seqwise_$tag" "$c" "$m" "$t" "$round"
      fi
      bench "$((port + 1))" "depthwise_$tag" "$c" "$m" "$t" "$round"
      if ((round % 2 == 1)); then
        bench "$port" "seqwise_$tag" "$c" "$m" "$t" "$round"
      else
        bench "$port" "seqwise_beside_$tag" "$c" "$m" 1 "$round"
      fi
    done
  done
  kill -TERM "$seq_pid" "$depth_pid"
  wait "$seq_pid" "$depth_pid" || true
done

# Quality of every point (the threshold "default" resolved from config.json).
if [[ "$quality" == 1 ]]; then
  for p in $points; do
    m=${p%%:*} t=${p##*:}
    if [[ "$t" == default ]]; then
      t=$(/usr/bin/python3 -c 'import json,sys; c=json.load(open(sys.argv[1]+"/config.json")); print(c.get("exit_thresholds",{}).get(sys.argv[2],1.0))' "$model" "$m")
    fi
    nice -n 19 /usr/bin/python3 tools/recursive/quality.py --model "$model" \
      --heldout "$heldout" --kv-policy "$kv_fill" --confidence "$m" \
      --thresholds "1.0,$t" --windows "$quality_windows" \
      --json "$out/quality_${m}_${p##*:}.json" >/dev/null
  done
fi

if [[ ${#prompt_exit_flags[@]} -gt 0 ]]; then
  prompt_rule="--prompt_exits=false (prompt tokens at full depth)"
elif [[ "$kv_fill" == propagate ]]; then
  prompt_rule="(prompt exits on, stratad's default)"
else
  prompt_rule="(prompt tokens at full depth: no prompt exits under $kv_fill)"
fi
echo "daemons: --kv_fill=$kv_fill $prompt_rule"
/usr/bin/python3 - "$out" "$concurrency" "$points" "$model" "$rounds" <<'PY'
import json, os, re, statistics, sys
out, clients, points, model = sys.argv[1], sys.argv[2].split(), \
    sys.argv[3].split(), sys.argv[4]
rounds = int(sys.argv[5])
n_loops = json.load(open(os.path.join(model, "config.json"))).get(
    "num_loops", 1)
cost = open(os.path.join(out, "exit_cost.txt")).read()
# h as timed inside the steps (the head and sampling over the loop of the
# same steps); the difference of best-of-rounds step times is printed too.
h = float(re.search(r"timed in the steps.*h = ([0-9.]+) loops", cost).group(1))
h_diff = float(re.search(r"best of .*h = (-?[0-9.]+) loops", cost).group(1))
print("N = %d loops, h = %.3f loops (strata-engine-bench --exit_cost, timed "
      "in the steps; %.3f from best-of-rounds step times); tok/s: median of "
      "%d alternating rounds, ratios: median of the rounds' ratios; of cap: "
      "the median round (the lowest and the highest round; the rounds' mean "
      "and its standard error, the figure to hold against a target when "
      "single rounds spread widely)"
      % (n_loops, h, h_diff, rounds))
for line in cost.splitlines():
    if line.startswith("exit check") or line.startswith("timed in the steps"):
        print("  " + line)
print()
def engine_costs(c):
    # (loop, head with sampling) per row in seconds at batch size c, timed
    # inside the engine's steps.
    text = open(os.path.join(out, "exit_cost_c%s.txt" % c)).read()
    m = re.search(r"timed in the steps.*loop ([0-9.]+) us, LM head ([0-9.]+) "
                  r"us, sampling ([0-9.]+) us", text)
    return (float(m.group(1)) * 1e-6,
            (float(m.group(2)) + float(m.group(3))) * 1e-6)
def runs(name, c):
    return [json.load(open(os.path.join(out, "%s-c%s-r%d.json" % (name, c, r))))
            for r in range(1, rounds + 1)]
def median_tps(name, c):
    return statistics.median(run["output_throughput"] for run in runs(name, c))
def round_ratios(name, base, c):
    # Per round: the two figures ran one after the other, seconds apart.
    return [a["output_throughput"] / b["output_throughput"]
            for a, b in zip(runs(name, c), runs(base, c))]
def median_ratio(name, base, c):
    # The median of the rounds' ratios: the machine's drift between rounds
    # cancels.
    return statistics.median(round_ratios(name, base, c))
qual = {}
for p in points:
    path = os.path.join(out, "quality_%s.json" % p.replace(":", "_"))
    if os.path.exists(path):
        q = json.load(open(path))
        base, row = q["results"][0], q["results"][-1]
        qual[p] = (row["threshold"], row["ppl"], row["ppl"] / base["ppl"] - 1,
                   row["mean_loops_teacher_forced"],
                   row["agreement_positionwise"])
if qual:
    print("| measure | threshold | held-out ppl | vs full depth | mean loops "
          "(teacher-forced) | greedy agreement (position-wise) |")
    print("|---|---|---|---|---|---|")
    for p, (t, ppl, inc, loops, agree) in qual.items():
        print("| %s | %.4g%s | %.3f | %+.1f%% | %.3f | %.3f |" % (
            p.split(":")[0], t, " (default)" if p.endswith(":default") else "",
            ppl, 100 * inc, loops, agree))
    print()
print("| measure:threshold | clients | seqwise tok/s | seqwise+exit tok/s "
      "| depthwise+exit tok/s | served mean loops | cap (N+h)/(n+h) | "
      "depthwise+exit / seqwise | of cap | depthwise full / seqwise "
      "| F (loops) | served cap | of served cap | engine alone: of cap |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def engine_alone(tag, c):
    # strata-engine-bench --exits's fraction of its own cap, or "-".
    path = os.path.join(out, "engine_exits_%s_c%s.txt" % (tag, c))
    if not os.path.exists(path):
        return "-"
    m = re.search(r"engine alone \(median.*?at ([0-9.]+) loops, cap "
                  r"[0-9.]+x: ([0-9.]+)% of the cap", open(path).read())
    return "%s%% (%s loops)" % (m.group(2), m.group(1)) if m else "-"
for c in clients:
    # Every sequence-wise full-depth run at this concurrency (the first row's
    # and each point's beside its depth-wise run) for F.
    base = statistics.median(
        run["output_throughput"] for name in
        ["seqwise"] + ["seqwise_beside_" + p.replace(":", "_") for p in points]
        for run in runs(name, c))
    depth_full = median_ratio("depthwise", "seqwise", c)
    loop, head = engine_costs(c)
    f = max(0.0, 1.0 / base - (n_loops * loop + head))
    for p in points:
        tag = p.replace(":", "_")
        seq_exit = median_tps("seqwise_" + tag, c)
        dw = runs("depthwise_" + tag, c)
        n = statistics.median(run.get("mean_loops") or n_loops for run in dw)
        cap = (n_loops + h) / (n + h)
        ratios = round_ratios("depthwise_" + tag, "seqwise_beside_" + tag, c)
        gain = statistics.median(ratios)
        mean = statistics.mean(ratios)
        # The mean's standard error over the rounds (0 for one round).
        sem = (statistics.stdev(ratios) / len(ratios) ** 0.5
               if len(ratios) > 1 else 0.0)
        served_cap = (n_loops * loop + head + f) / (n * loop + head + f)
        print("| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2fx | %.2fx | %.0f%% "
              "(%.0f-%.0f; mean %.1f%% ± %.1f) | %.2fx | %.2f | %.2fx | "
              "%.0f%% | %s |" % (
                  p, c, median_tps("seqwise_beside_" + tag, c), seq_exit, median_tps("depthwise_" + tag, c), n,
                  cap, gain, 100 * gain / cap, 100 * min(ratios) / cap,
                  100 * max(ratios) / cap, 100 * mean / cap, 100 * sem / cap,
                  depth_full, f / loop, served_cap,
                  100 * gain / served_cap, engine_alone(tag, c)))
PY
