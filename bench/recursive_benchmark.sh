#!/usr/bin/env bash
# Recursive-model benchmark (docs/recursive-models.md, "Benchmark"): one
# closed-loop workload through stratad at 1, 8 and 32 concurrent clients for
#   seqwise          sequence-wise continuous batching, full depth (baseline)
#   seqwise_exit0.8  sequence-wise, early exit at threshold 0.8
#   depthwise        depth-wise batching, full depth
#   depthwise_exitT  depth-wise, early exit at each T of THRESHOLDS (0.9, 0.8
#                    and 0.6 as the issue asks, then 0.3 and 0.2, where the
#                    bundled model still keeps perplexity within 5%)
# and a table of output tokens/s, the ratio to the baseline at the same
# concurrency, TPOT and the mean loops per generated token. Quality beside it
# (held-out perplexity with exits, greedy agreement with full depth) comes
# from tools/recursive/quality.py.
#
# Usage: bench/recursive_benchmark.sh [MODEL_DIR] [OUT_DIR]
# Env: CONCURRENCY="1 8 32", THRESHOLDS="0.9 0.8 0.6 0.3 0.2", OUTPUT_LEN=64,
# INPUT_LEN=64, KV_FILL=propagate.
# Needs build/bin/stratad and build/bin/strata-bench (scripts/build.sh).
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
thresholds=${THRESHOLDS:-0.9 0.8 0.6 0.3 0.2}

bench() {  # bench NAME CLIENTS THRESHOLD
  local name=$1 clients=$2 threshold=$3
  local requests=$((clients * 3 > 24 ? clients * 3 : 24))
  build/bin/strata-bench --target="127.0.0.1:$port" --connect_timeout_s=60 \
    --mode=closed --concurrency="$clients" --num_requests="$requests" \
    --num_warmup=2 --ignore_eos --seed=11 --max_run_s=900 \
    --workload=random --input_len="$input_len" --output_len="$output_len" \
    --range_ratio=0.5 --exit_threshold="$threshold" --label="$name" \
    --result_json="$out/$name-c$clients.json" >"$out/$name-c$clients.txt" 2>&1
}

serve() {  # serve MODE, then runs "NAME THRESHOLD" pairs from stdin
  local mode=$1
  build/bin/stratad --model="$model" --port="$port" --loop_batching="$mode" \
    --kv_fill="$kv_fill" --enable_prefix_caching=false \
    >"$out/stratad-$mode.log" 2>&1 &
  local pid=$!
  while read -r name threshold; do
    for c in $concurrency; do bench "$name" "$c" "$threshold"; done
  done
  kill -TERM $pid
  wait $pid || true
}

serve sequencewise <<EOF
seqwise 1.0
seqwise_exit0.8 0.8
EOF
{
  echo "depthwise 1.0"
  for t in $thresholds; do echo "depthwise_exit$t $t"; done
} | serve depthwise

/usr/bin/python3 - "$out" "$concurrency" "$thresholds" <<'PY'
import json, os, sys
out, clients = sys.argv[1], sys.argv[2].split()
rows = ["seqwise", "seqwise_exit0.8", "depthwise"] + [
    f"depthwise_exit{t}" for t in sys.argv[3].split()]
print("| configuration | clients | output tok/s | vs seqwise | mean TPOT ms | p99 TPOT ms | mean loops |")
print("|---|---|---|---|---|---|---|")
for c in clients:
    base = None
    for name in rows:
        r = json.load(open(os.path.join(out, f"{name}-c{c}.json")))
        tps = r["output_throughput"]
        base = base or tps
        print(f"| {name} | {c} | {tps:.0f} | {tps / base:.2f}x | "
              f"{r['mean_tpot_ms']:.2f} | {r['p99_tpot_ms']:.2f} | "
              f"{r.get('mean_loops', 0):.2f} |")
PY
