#!/usr/bin/env bash
# bench/http_unary.py against a real stratad on loopback: a closed-loop run
# counts exactly the tokens asked for, --tpot prints a decode time, and a
# field the daemon refuses fails the run (exit 1) with the daemon's message.
# Usage: tests/bench/http_unary_test.sh BIN_DIR   (exit 0 = passed)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-${root}/build/bin}"
tmp="$(mktemp -d)"
pid=""
cleanup() {
  [[ -n "${pid}" ]] && kill "${pid}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "${tmp}"
}
trap cleanup EXIT
fail() { echo "FAIL $*"; exit 1; }

source "${root}/tests/testing/free_port.sh"
strata_free_port http_port
"${bin}/stratad" --model="${root}/models/strata-recursive-tiny" --port=0 \
  --port_file="${tmp}/port" --http_port="${http_port}" \
  >"${tmp}/stratad.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do [[ -s "${tmp}/port" ]] && break; sleep 0.1; done
[[ -s "${tmp}/port" ]] || { cat "${tmp}/stratad.log"; fail "stratad did not start"; }
unary() { /usr/bin/python3 "${root}/bench/http_unary.py" --port="${http_port}" "$@"; }

# 6 requests of exactly 9 tokens (range_ratio 0, ignore_eos) from 3 clients.
out=$(unary --clients=3 --requests=6 --input_len=12 --output_len=9 \
  --exit_confidence=classifier) || fail "closed loop: exit $?: ${out}"
grep -q "^requests: 6, output tokens: 54," <<<"${out}" ||
  fail "closed loop: ${out}"
grep -Eq "^Output token throughput \(tok/s\): [0-9]+\.[0-9]+$" <<<"${out}" ||
  fail "closed loop: ${out}"

out=$(unary --tpot --requests=2 --input_len=8 --output_len=6) ||
  fail "tpot: exit $?: ${out}"
[[ $(grep -c "^decode ms per token: " <<<"${out}") == 2 ]] || fail "tpot: ${out}"
grep -q "^median decode ms per token: " <<<"${out}" || fail "tpot: ${out}"

# A measure the daemon does not know: HTTP 400 naming the field, exit 1.
set +e
out=$(unary --requests=2 --exit_confidence=entropy 2>&1)
rc=$?
set -e
[[ ${rc} == 1 ]] || fail "refused field: exit ${rc}: ${out}"
grep -q "HTTP 400" <<<"${out}" && grep -q "exit_confidence" <<<"${out}" ||
  fail "refused field: ${out}"
echo "PASS"
