#!/usr/bin/env bash
# Batching benchmark (docs/batching.md): the same closed-loop workload through
# stratad under four scheduler configurations, one after another on the same
# port, and a table of output tokens/s and TTFT/TPOT percentiles.
#
# Usage: bench/batching_benchmark.sh [MODEL_DIR] [OUT_DIR]
# Needs build/bin/stratad and build/bin/strata-bench (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/strata-tiny}
out=${2:-/tmp/strata-batching-bench}
mkdir -p "$out"
port=${STRATA_BENCH_PORT:-50561}
requests=${REQUESTS:-128}
clients=${CLIENTS:-16}

run() {  # run NAME WORKLOAD_FLAGS -- STRATAD_FLAGS
  local name=$1 workload=$2; shift 2
  build/bin/stratad --model="$model" --port="$port" "$@" >"$out/$name.log" 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  # shellcheck disable=SC2086
  build/bin/strata-bench --target="127.0.0.1:$port" --connect_timeout_s=60 \
    --mode=closed --concurrency="$clients" --num_requests="$requests" \
    --num_warmup=4 --ignore_eos --seed=7 --max_run_s=900 $workload \
    --label="$name" --result_json="$out/$name.json" >"$out/$name.txt" 2>&1
  kill -TERM $pid; wait $pid || true
}

mixed="--workload=random --input_len=128 --output_len=64 --range_ratio=0.5"
shared="--workload=shared_prefix --num_prefixes=4 --prefix_len=256 --input_len=32 --output_len=64 --range_ratio=0.5"

run one_at_a_time "$mixed" --max_num_seqs=1 --enable_prefix_caching=false
run static_batching "$mixed" --max_num_seqs="$clients" --static_batching --enable_prefix_caching=false
run continuous "$mixed" --enable_prefix_caching=false
run continuous_shared_prefix_off "$shared" --enable_prefix_caching=false
run continuous_shared_prefix_on "$shared" --enable_prefix_caching=true

/usr/bin/python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = ["one_at_a_time", "static_batching", "continuous",
        "continuous_shared_prefix_off", "continuous_shared_prefix_on"]
base = None
print(f"| configuration | output tok/s | vs one-at-a-time | mean TTFT ms | p99 TTFT ms | mean TPOT ms | p99 TPOT ms | cached prompt tokens |")
print("|---|---|---|---|---|---|---|---|")
for name in rows:
    r = json.load(open(os.path.join(out, name + ".json")))
    tps = r["output_throughput"]
    if base is None: base = tps
    print(f"| {name} | {tps:.0f} | {tps/base:.2f}x | {r['mean_ttft_ms']:.1f} | {r['p99_ttft_ms']:.1f} | "
          f"{r['mean_tpot_ms']:.2f} | {r['p99_tpot_ms']:.2f} | {r.get('cached_input_tokens', 0)} |")
PY
