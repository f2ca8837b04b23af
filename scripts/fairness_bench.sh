#!/usr/bin/env bash
# Measures fair admission (docs/security.md): the p99 time to first token of
# a small API key sending 1 request/s, first on an idle stratad, then while a
# hog key keeps 64 requests of n=16 in flight. Prints both and their ratio.
# Usage: scripts/fairness_bench.sh [MODEL_DIR] [SMALL_REQUESTS]
# STRATAD=path/to/stratad NO_KEYS=1 runs the same load against a daemon
# without API keys (e.g. a build from before fair admission): both clients
# are then one tenant, the baseline.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${root}/build/bin"
model="${1:-${root}/models/strata-tiny}"
small_requests="${2:-30}"
tmp="$(mktemp -d)"
daemon_pid=""
hog_pid=""
cleanup() {
  [[ -n "${hog_pid}" ]] && kill "${hog_pid}" 2>/dev/null || true
  [[ -n "${daemon_pid}" ]] && kill "${daemon_pid}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "${tmp}"
}
trap cleanup EXIT

printf 'hog sk-bench-hog\nsmall sk-bench-small\n' >"${tmp}/keys"
chmod 600 "${tmp}/keys"
keys_flag=(--api_keys_file="${tmp}/keys")
[[ -n "${NO_KEYS:-}" ]] && keys_flag=()
"${STRATAD:-${bin}/stratad}" --model="${model}" --port=0 \
  --port_file="${tmp}/port" "${keys_flag[@]}" --metrics_port="${METRICS_PORT:-19465}" \
  >"${tmp}/stratad.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 120); do [[ -s "${tmp}/port" ]] && break; sleep 0.5; done
target="127.0.0.1:$(cat "${tmp}/port")"

small() {  # $1: result file
  "${bin}/strata-bench" --target="${target}" --api_key=sk-bench-small \
    --mode=open --request_rate=1 --num_requests="${small_requests}" \
    --num_warmup=2 --input_len=32 --output_len=16 --result_json="$1" >/dev/null
}
p99_ttft() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["p99_ttft_ms"])' "$1"
}

small "${tmp}/idle.json"
"${bin}/strata-bench" --target="${target}" --api_key=sk-bench-hog \
  --mode=closed --concurrency=64 --n=16 --input_len=32 --output_len=512 \
  --num_warmup=0 --num_requests=1000000 --duration_s=3600 \
  --abort_after_errors=0 --result_json="${tmp}/hog.json" >/dev/null 2>&1 &
hog_pid=$!
sleep 5  # the hog fills every slot first
small "${tmp}/hog_running.json"

# Evidence that the hog was busy all along: its tokens and the preemptions
# fair admission made for the small key.
curl -s "127.0.0.1:${METRICS_PORT:-19465}/metrics" |
  grep -E '^strata_(key_(requests|generation_tokens)_total|preemptions_total|requests_running|requests_waiting)' || true

idle="$(p99_ttft "${tmp}/idle.json")"
loaded="$(p99_ttft "${tmp}/hog_running.json")"
echo "small key p99 TTFT: idle ${idle} ms, with the hog ${loaded} ms," \
  "ratio $(python3 -c "print(round(${loaded}/${idle}, 2))")"
