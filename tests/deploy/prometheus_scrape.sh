#!/usr/bin/env bash
# A real Prometheus server scrapes a real stratad: start the daemon with
# --metrics_port, start Debian's prometheus with a 1 s scrape interval against
# it, send a few completions with strata-cli, and ask Prometheus's HTTP API for
# the generated-token rate; it must be positive. All on loopback, bounded.
# Usage: tests/deploy/prometheus_scrape.sh BIN_DIR   (exit 0 = passed)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-${root}/build/bin}"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${tmp}"
}
trap cleanup EXIT

source "${root}/tests/testing/free_port.sh"
strata_free_port metrics_port
strata_free_port prom_port

"${bin}/stratad" --model="${root}/tests/data/tiny-llama" --port=0 \
  --port_file="${tmp}/port" --metrics_port="${metrics_port}" \
  >"${tmp}/stratad.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [[ -s "${tmp}/port" ]] && break; sleep 0.1; done
[[ -s "${tmp}/port" ]] || { echo "FAIL stratad did not start"; cat "${tmp}/stratad.log"; exit 1; }
addr="127.0.0.1:$(cat "${tmp}/port")"

cat >"${tmp}/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: strata
    static_configs:
      - targets: ["127.0.0.1:${metrics_port}"]
YAML
prometheus --config.file="${tmp}/prometheus.yml" --storage.tsdb.path="${tmp}/data" \
  --web.listen-address="127.0.0.1:${prom_port}" >"${tmp}/prometheus.log" 2>&1 &
pids+=($!)

query() {  # the first result's value of an instant query, or empty
  curl -sf --max-time 5 "http://127.0.0.1:${prom_port}/api/v1/query" \
    --data-urlencode "query=$1" |
    /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true
}

# Wait for Prometheus to see the target up.
for _ in $(seq 1 60); do [[ "$(query 'up{job="strata"}')" == "1" ]] && break; sleep 0.5; done
[[ "$(query 'up{job="strata"}')" == "1" ]] || { echo "FAIL prometheus never scraped stratad"; tail -5 "${tmp}/prometheus.log"; exit 1; }

# Generate for a few seconds so that the rate spans several scrapes.
for _ in $(seq 1 6); do
  "${bin}/strata-cli" --addr="${addr}" complete "Once upon a time" \
    --max_tokens=64 >/dev/null 2>&1
  sleep 0.7
done
sleep 2
rate=""
for _ in $(seq 1 20); do
  rate=$(query 'sum(rate(strata_generation_tokens_total[15s]))')
  if [[ -n "${rate}" ]] && /usr/bin/python3 -c "import sys; sys.exit(0 if float('${rate}') > 0 else 1)"; then
    echo "PASS prometheus query rate(strata_generation_tokens_total) = ${rate} tokens/s"
    echo "1 passed, 0 failed"
    exit 0
  fi
  sleep 0.5
done
echo "FAIL generated-token rate from Prometheus was '${rate}'"
echo "0 passed, 1 failed"
exit 1
