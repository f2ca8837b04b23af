#!/usr/bin/env bash
# A/B benchmark of two stratad configurations on one machine.
#
# Starts configuration A, runs strata-bench against it, stops it; then the
# same for B, on the same port with the same workload; and repeats for
# --rounds rounds in the order A B, B A, A B, ..., so slow drifts of the
# machine (thermal, background load) hit both sides alike and neither side
# always runs second (on a warmer page cache, after the other's load).
# Finally prints every figure as the mean over rounds for A and B, the
# spread, and the ratio B/A.
#
# Usage:
#   bench/compare.sh --a="--kv_cache_mb=256" --b="--kv_cache_mb=1024" \
#       [--a_bin=build/bin/stratad] [--b_bin=other/build/bin/stratad] \
#       [--a_label=NAME] [--b_label=NAME] [--rounds=3] [--port=50151] \
#       [--out=DIR] [--bench=build/bin/strata-bench] [--startup_timeout=300] \
#       [--a_bench="strata-bench flags for A only"] [--b_bench=...] \
#       [-- strata-bench flags, e.g. --concurrency=8 --num_requests=100]
#
# --a/--b (and --a_bench/--b_bench) are split on spaces (no quoting inside).
# The daemon always gets --host=127.0.0.1 --port=PORT --port_file=...
# --metrics_port=PORT+1 (and --http_port=PORT+2 when a side's strata-bench
# flags say --protocol=http), and strata-bench --target and --http_target to
# match; do not pass those. The HTTP API against gRPC on
# one configuration: --a="FLAGS" --b="FLAGS" --b_bench="--protocol=http". Results: DIR/{A,B}.<round>.json, daemon logs
# DIR/{A,B}.<round>.log, DIR/compare.json, and the engine's own side of each
# run, scraped from /metrics around the benchmark: engine steps per second
# and mean step time (DIR/{A,B}.<round>.engine, summed up at the end). Exit status: 0 when every run completed, 1 on setup
# failure, 2 when some run was aborted or a daemon failed (those rounds are
# left out of the comparison and named).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
a_flags="" b_flags="" a_bench_flags="" b_bench_flags=""
a_bin="${root}/build/bin/stratad" b_bin=""
a_label="A" b_label="B"
rounds=3 port=50151 out="" startup_timeout=300
bench="${root}/build/bin/strata-bench"
bench_flags=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

while (($#)); do
  case "$1" in
    --a=*) a_flags="${1#*=}" ;;
    --b=*) b_flags="${1#*=}" ;;
    --a_bench=*) a_bench_flags="${1#*=}" ;;
    --b_bench=*) b_bench_flags="${1#*=}" ;;
    --a_bin=*) a_bin="${1#*=}" ;;
    --b_bin=*) b_bin="${1#*=}" ;;
    --a_label=*) a_label="${1#*=}" ;;
    --b_label=*) b_label="${1#*=}" ;;
    --rounds=*) rounds="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --out=*) out="${1#*=}" ;;
    --bench=*) bench="${1#*=}" ;;
    --startup_timeout=*) startup_timeout="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; bench_flags=("$@"); break ;;
    *) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 1 ;;
  esac
  shift
done
b_bin="${b_bin:-${a_bin}}"

die() { echo "compare.sh: $*" >&2; exit 1; }
if ! [[ "${rounds}" =~ ^[1-9][0-9]*$ ]] || ((rounds > 100)); then
  die "--rounds must be in [1, 100]"
fi
if ! [[ "${port}" =~ ^[1-9][0-9]*$ ]] || ((port > 65535)); then
  die "--port must be a TCP port"
fi
[[ "${startup_timeout}" =~ ^[1-9][0-9]*$ ]] ||
  die "--startup_timeout must be a positive number of seconds"
[[ -x "${bench}" ]] || die "strata-bench not found at ${bench} (build it)"
for bin in "${a_bin}" "${b_bin}"; do
  [[ -x "${bin}" ]] || die "stratad not found at ${bin} (build it)"
done
for flag in "${bench_flags[@]}"; do
  case "${flag}" in
    --target=*|--http_target=*|--result_json=*|--sweep=*|--compare_*)
      die "do not pass ${flag%%=*} to strata-bench; compare.sh sets it" ;;
  esac
done
# The HTTP listener only when a side benchmarks over it (older daemons, as
# an --a_bin, may not have --http_port).
http_daemon_flags=()
if [[ " ${bench_flags[*]} ${a_bench_flags} ${b_bench_flags} " == *" --protocol=http "* ]]; then
  http_daemon_flags=(--http_port="$((port + 2))")
fi
if [[ -z "${out}" ]]; then
  out="$(mktemp -d /tmp/strata-compare.XXXXXX)"
fi
mkdir -p "${out}"

daemon_pid=""
stop_daemon() {
  [[ -n "${daemon_pid}" ]] || return 0
  if kill -0 "${daemon_pid}" 2>/dev/null; then
    kill -TERM "${daemon_pid}" 2>/dev/null || true
    for _ in $(seq 1 300); do  # up to 30 s for a graceful drain
      kill -0 "${daemon_pid}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${daemon_pid}" 2>/dev/null; then
      echo "compare.sh: daemon ${daemon_pid} ignored SIGTERM; killing it" >&2
      kill -KILL "${daemon_pid}" 2>/dev/null || true
    fi
  fi
  wait "${daemon_pid}" 2>/dev/null || true
  daemon_pid=""
}
trap stop_daemon EXIT
trap 'stop_daemon; exit 130' INT TERM

# "STEPS STEP_SECONDS" from the running daemon's /metrics ("0 0" if it has
# none to give).
engine_counters() {
  curl -fsS --max-time 5 "http://127.0.0.1:$((port + 1))/metrics" 2>/dev/null |
    awk '/^strata_engine_steps_total /{s=$2} /^strata_engine_step_duration_seconds_sum /{d=$2}
         END {printf "%s %s\n", (s == "" ? 0 : s), (d == "" ? 0 : d)}'
}

# run_one NAME BIN FLAGS ROUND: one daemon start, one benchmark, one stop.
# Prints nothing on success; returns 1 if this round must be left out.
run_one() {
  local name="$1" bin="$2" flags="$3" round="$4"
  local port_file="${out}/${name}.${round}.port"
  local log="${out}/${name}.${round}.log"
  local json="${out}/${name}.${round}.json"
  local label="${a_label}" side_bench="${a_bench_flags}"
  if [[ "${name}" == B ]]; then
    label="${b_label}"
    side_bench="${b_bench_flags}"
  fi
  local -a daemon_flags=() side_bench_flags=()
  read -r -a daemon_flags <<<"${flags}"
  read -r -a side_bench_flags <<<"${side_bench}"
  rm -f "${port_file}" "${json}"
  echo "== round ${round}/${rounds}: ${name} (${label}): ${bin} ${flags}"
  "${bin}" "${daemon_flags[@]}" --host=127.0.0.1 --port="${port}" \
    --port_file="${port_file}" --metrics_port="$((port + 1))" \
    "${http_daemon_flags[@]}" >"${log}" 2>&1 &
  daemon_pid=$!
  local waited=0
  until [[ -s "${port_file}" ]]; do
    if ! kill -0 "${daemon_pid}" 2>/dev/null; then
      echo "compare.sh: ${name} exited during start-up; see ${log}:" >&2
      tail -n 5 "${log}" >&2
      wait "${daemon_pid}" 2>/dev/null || true
      daemon_pid=""
      return 1
    fi
    if ((waited >= startup_timeout * 10)); then
      echo "compare.sh: ${name} did not start within ${startup_timeout} s" >&2
      stop_daemon
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  local status=0
  local before after t0 t1
  before="$(engine_counters)"
  t0="$(date +%s.%N)"
  "${bench}" --target="127.0.0.1:${port}" \
    --http_target="127.0.0.1:$((port + 2))" --result_json="${json}" \
    --label="${label}" --connect_timeout_s="${startup_timeout}" \
    "${bench_flags[@]}" "${side_bench_flags[@]}" || status=$?
  t1="$(date +%s.%N)"
  after="$(engine_counters)"
  # steps/s over the benchmark's wall time, and the mean step's duration.
  echo "${before} ${after} ${t0} ${t1}" | awk '{
      steps = $3 - $1; secs = $4 - $2; wall = $6 - $5;
      printf "%.1f %.3f %d\n", steps / wall, (steps > 0 ? 1000 * secs / steps : 0), steps
    }' >"${out}/${name}.${round}.engine"
  echo "   engine: $(awk '{printf "%.1f steps/s, mean step %.3f ms, %d steps", $1, $2, $3}' \
    "${out}/${name}.${round}.engine")"
  if ! kill -0 "${daemon_pid}" 2>/dev/null; then
    echo "compare.sh: ${name} died during the run; see ${log}" >&2
    status=3
  fi
  stop_daemon
  if ((status != 0)); then
    echo "compare.sh: ${name} round ${round} left out (strata-bench exit" \
      "${status})" >&2
    return 1
  fi
}

a_results=() b_results=() failures=0
run_side() {  # run_side A|B ROUND
  if [[ "$1" == A ]]; then
    if run_one A "${a_bin}" "${a_flags}" "$2"; then
      a_results+=("${out}/A.$2.json")
    else
      failures=$((failures + 1))
    fi
  elif run_one B "${b_bin}" "${b_flags}" "$2"; then
    b_results+=("${out}/B.$2.json")
  else
    failures=$((failures + 1))
  fi
}
for round in $(seq 1 "${rounds}"); do
  if ((round % 2 == 1)); then
    run_side A "${round}"
    run_side B "${round}"
  else
    run_side B "${round}"
    run_side A "${round}"
  fi
done

if ((${#a_results[@]} == 0 || ${#b_results[@]} == 0)); then
  die "no complete run for $( ((${#a_results[@]} == 0)) && echo A || echo B); logs in ${out}"
fi
join() { local IFS=,; echo "$*"; }
echo
"${bench}" --compare_a="$(join "${a_results[@]}")" \
  --compare_b="$(join "${b_results[@]}")" \
  --compare_a_label="${a_label}: ${a_bin##"${root}"/} ${a_flags} ${a_bench_flags}" \
  --compare_b_label="${b_label}: ${b_bin##"${root}"/} ${b_flags} ${b_bench_flags}" \
  --compare_json="${out}/compare.json"
echo
# The engine's side: steps per second and mean step time, per configuration.
for name in A B; do
  cat "${out}/${name}".*.engine 2>/dev/null | awk -v n="${name}" '
    { s += $1; t += $2; k++ }
    END { if (k) printf "engine %s: %.1f steps/s, mean step %.3f ms (%d rounds)\n", n, s / k, t / k, k }'
done
echo
echo "Results and daemon logs: ${out}"
if ((failures > 0)); then
  echo "compare.sh: ${failures} run(s) left out; see above" >&2
  exit 2
fi
