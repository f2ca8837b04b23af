#!/usr/bin/env bash
# Soak: runs stratad on loopback for a stated time under a mixed load and
# reports requests by outcome (as the clients saw them and as /metrics counts
# them), RSS at start / after warm-up / at the end, open files and threads
# once a minute, and whether any counter or gauge disagrees with the clients.
#
#   scripts/soak.sh [--duration_s=1800] [--model=models/strata-recursive-tiny]
#                   [--bin=build/bin] [--out=soak-out] [--concurrency=8]
#
# The load (everything bounded, loopback only):
#   streams      strata-bench, closed loop, --concurrency streaming requests
#                for the whole duration (its requests still in flight at the
#                end are cancelled by the bench and counted as such);
#   a mixed client cycling through
#     n>1        complete --n=4 (one request, one outcome, on the server);
#     deadline   a 1 s deadline on a ~1000-token generation (DEADLINE_EXCEEDED);
#     disconnect a client that dies (SIGPIPE) after its first text arrived;
#     cancel     strata-bench runs cut at --max_run_s=0.4: explicit RST_STREAM
#                cancels on a connection that stays open;
#     bad input  an out-of-range sampling field (INVALID_ARGUMENT) and raw
#                garbage bytes on the gRPC port.
# Exit status: 0 when the daemon survived, every counter agreed and the
# gauges were idle at the end; 1 otherwise (the report says which).
set -uo pipefail
cd "$(dirname "$0")/.."

duration_s=1800
model=models/strata-recursive-tiny
bin=build/bin
out=soak-out
concurrency=8
for arg in "$@"; do
  case "${arg}" in
    --duration_s=*) duration_s=${arg#*=} ;;
    --model=*) model=${arg#*=} ;;
    --bin=*) bin=${arg#*=} ;;
    --out=*) out=${arg#*=} ;;
    --concurrency=*) concurrency=${arg#*=} ;;
    *) echo "soak.sh: unknown argument ${arg}" >&2; exit 2 ;;
  esac
done
mkdir -p "${out}"
for b in stratad strata-cli strata-bench; do
  [[ -x "${bin}/${b}" ]] || { echo "soak.sh: ${bin}/${b} missing (build first)" >&2; exit 2; }
done

# The ports the tests use, reserved the same way (tests/testing/free_port.sh).
source tests/testing/free_port.sh
strata_free_port port || exit 2
strata_free_port metrics_port || exit 2
addr=127.0.0.1:${port}

"${bin}/stratad" --model="${model}" --host=127.0.0.1 --port="${port}" \
  --metrics_port="${metrics_port}" --port_file="${out}/port" \
  >"${out}/stratad.log" 2>&1 &
pid=$!
cleanup() {
  kill "${pid}" 2>/dev/null
  for job in $(jobs -p); do kill "${job}" 2>/dev/null; done
}
trap cleanup EXIT
for _ in $(seq 600); do
  [[ -s "${out}/port" ]] && break
  kill -0 "${pid}" 2>/dev/null || { echo "soak.sh: stratad died at start" >&2; cat "${out}/stratad.log" >&2; exit 1; }
  sleep 0.5
done

scrape() { curl -s --max-time 10 "http://127.0.0.1:${metrics_port}/metrics"; }
metric() {  # metric NAME_WITH_LABELS FILE -> value (0 when absent)
  awk -v m="$1" '$1 == m { v = $2 } END { printf "%d\n", v + 0 }' "$2"
}
sample() {  # minute rss_kB open_fds threads
  local rss fds threads
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/${pid}/status" 2>/dev/null)
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/${pid}/status" 2>/dev/null)
  fds=$(ls "/proc/${pid}/fd" 2>/dev/null | wc -l)
  printf "%6d %8s %9s %8s\n" "$1" "${rss:-dead}" "${fds}" "${threads:-dead}"
}

echo "# minute  rss_kB  open_fds  threads" >"${out}/samples.txt"
sample 0 >>"${out}/samples.txt"
start=$(date +%s)
end=$((start + duration_s))

# The streams.
"${bin}/strata-bench" --target="${addr}" --concurrency="${concurrency}" \
  --num_requests=100000000 --duration_s="${duration_s}" \
  --max_run_s="${duration_s}" --workload=random --input_len=96 \
  --output_len=96 --range_ratio=0.8 --progress_s=60 \
  --result_json="${out}/bench.json" >"${out}/bench.log" 2>&1 &
bench_pid=$!

# The mixed client. Counts what it saw, by kind and result, in mixed.txt.
mixed() {
  local cli="${bin}/strata-cli --addr=${addr}" i=0 rc
  declare -A seen=()
  local bench_cancelled=0 bench_ok=0 bench_failed=0
  while (($(date +%s) < end - 5)); do
    case $((i % 6)) in
      0) if ${cli} --n=4 --max_tokens=16 --temperature=0.8 complete "The sea" \
              >/dev/null 2>"${out}/last-n.err"; then
           seen[n4_ok]=$((${seen[n4_ok]:-0} + 1))
         else seen[n4_fail]=$((${seen[n4_fail]:-0} + 1)); fi ;;
      1) # Long enough to reach the server on a loaded machine, far shorter
         # than the ~1000 tokens asked for.
         # On an idle fast machine the generation can finish inside the
         # second: then it is an ok request on both sides, not a failure.
         if ${cli} --timeout=1s --max_tokens=2000 --ignore_eos --temperature=0 \
            complete "Once upon a time" >/dev/null 2>"${out}/last-deadline.err"; then
           seen[deadline_finished]=$((${seen[deadline_finished]:-0} + 1))
         elif grep -q DEADLINE_EXCEEDED "${out}/last-deadline.err"; then
           seen[deadline]=$((${seen[deadline]:-0} + 1))
         else seen[deadline_other]=$((${seen[deadline_other]:-0} + 1)); fi ;;
      2) # The client dies (SIGPIPE) once its first text arrived: the request
         # certainly reached the server and was streaming.
         ${cli} --max_tokens=2000 --ignore_eos complete "A long story" \
            2>/dev/null | head -c 16 >/dev/null
         rc=${PIPESTATUS[0]}
         if ((rc != 0)); then seen[disconnect]=$((${seen[disconnect]:-0} + 1))
         else seen[disconnect_finished]=$((${seen[disconnect_finished]:-0} + 1)); fi ;;
      3) "${bin}/strata-bench" --target="${addr}" --concurrency=2 \
            --num_requests=2 --num_warmup=0 --max_run_s=0.4 --input_len=16 \
            --output_len=900 --progress_s=0 \
            --result_json="${out}/cancel.json" >/dev/null 2>&1
         if [[ -s "${out}/cancel.json" ]]; then
           read -r c o f < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); r=j.get("runs",[j])[0] if "runs" in j else j; print(r.get("cancelled_by_bench",0), r.get("completed",0), r.get("failed",0))' "${out}/cancel.json" 2>/dev/null || echo "0 0 0")
           bench_cancelled=$((bench_cancelled + c)); bench_ok=$((bench_ok + o)); bench_failed=$((bench_failed + f))
           rm -f "${out}/cancel.json"
         fi ;;
      4) if ${cli} --top_p=5 complete "x" >/dev/null 2>"${out}/last-bad.err"; then
           seen[bad_accepted]=$((${seen[bad_accepted]:-0} + 1))
         elif grep -q INVALID_ARGUMENT "${out}/last-bad.err"; then
           seen[bad_invalid_argument]=$((${seen[bad_invalid_argument]:-0} + 1))
         else seen[bad_other]=$((${seen[bad_other]:-0} + 1)); fi ;;
      5) # Garbage bytes instead of an HTTP/2 preface, then hang up.
         if exec 3<>"/dev/tcp/127.0.0.1/${port}"; then
           head -c 4096 /dev/urandom >&3 2>/dev/null
           exec 3>&-
           seen[garbage_connections]=$((${seen[garbage_connections]:-0} + 1))
         fi ;;
    esac
    i=$((i + 1))
  done
  {
    for k in "${!seen[@]}"; do echo "${k} ${seen[${k}]}"; done
    echo "cancel_bench_cancelled ${bench_cancelled}"
    echo "cancel_bench_completed ${bench_ok}"
    echo "cancel_bench_failed ${bench_failed}"
  } | sort >"${out}/mixed.txt"
}
mixed &
mixed_pid=$!

minute=0
crashed=0
while (($(date +%s) < end)); do
  sleep 5
  if ! kill -0 "${pid}" 2>/dev/null; then crashed=1; break; fi
  now=$(date +%s)
  if (((now - start) / 60 > minute)); then
    minute=$(((now - start) / 60))
    sample "${minute}" >>"${out}/samples.txt"
  fi
done
wait "${bench_pid}"; bench_rc=$?
wait "${mixed_pid}"
sleep 3  # the last cancels reach the engine loop
kill -0 "${pid}" 2>/dev/null || crashed=1
sample "$(( ($(date +%s) - start + 59) / 60 ))" >>"${out}/samples.txt"
scrape >"${out}/metrics-end.txt"
cat "${out}/samples.txt"

python3 - "${out}" "${crashed}" "${bench_rc}" "${duration_s}" <<'PY'
import json, os, sys
out, crashed, bench_rc, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def metric(name):
    v = 0.0
    for line in open(os.path.join(out, "metrics-end.txt")):
        if line.split(" ")[0] == name:
            v = float(line.split()[-1])
    return v
def labelled(name, label):
    for line in open(os.path.join(out, "metrics-end.txt")):
        if line.startswith(name + "{") and label in line:
            return float(line.split()[-1])
    return 0.0
mixed = dict(l.split() for l in open(os.path.join(out, "mixed.txt")))
mixed = {k: int(v) for k, v in mixed.items()}
bench = json.load(open(os.path.join(out, "bench.json")))
b = bench["runs"][0] if "runs" in bench else bench
server = {o: int(labelled("strata_requests_total", f'outcome="{o}"'))
          for o in ("ok", "cancelled", "deadline", "rejected", "error")}
warmup = int(bench.get("num_warmup", 8))
# n>1: one request (one outcome) on the server whatever n is.
client_ok = (b["completed"] + warmup + mixed.get("n4_ok", 0)
             + mixed.get("cancel_bench_completed", 0)
             + mixed.get("disconnect_finished", 0)
             + mixed.get("deadline_finished", 0))
client_cancelled = (b.get("cancelled_by_bench", 0) + mixed.get("disconnect", 0)
                    + mixed.get("cancel_bench_cancelled", 0))
client_deadline = mixed.get("deadline", 0)
samples = [l.split() for l in open(os.path.join(out, "samples.txt")) if not l.startswith("#")]
rss = [int(s[1]) for s in samples if s[1].isdigit()]
report = {
    "duration_s": int(duration), "crashed": bool(crashed), "bench_exit": bench_rc,
    "bench": {k: b.get(k) for k in ("completed", "failed", "cancelled_by_bench", "errors_by_code")},
    "mixed_client": mixed, "server_requests_total": server,
    "client_expected": {"ok": client_ok, "cancelled+deadline": client_cancelled + client_deadline,
                        "deadline": client_deadline},
    "gauges_end": {g: metric(g) for g in ("strata_requests_running", "strata_requests_waiting",
                                          "strata_kv_cache_used_blocks")},
    "rss_kB": {"start": rss[0] if rss else None, "after_warmup": rss[1] if len(rss) > 1 else None,
               "end": rss[-1] if rss else None},
}
if len(rss) > 2:
    report["rss_growth_after_warmup_pct"] = round(100.0 * (rss[-1] - rss[1]) / rss[1], 2)
problems = []
if crashed: problems.append("stratad died")
# A cancel can race the request's last token: the client saw "cancelled",
# the server finished it "ok". That can only happen to a request a client
# cut (the bench's cancels at the end, the disconnects), so the ok counts
# may differ by at most that many, in that direction, and the totals must
# agree exactly.
raced = server["ok"] - client_ok
race_bound = b.get("cancelled_by_bench", 0) + mixed.get("disconnect", 0)
report["cancel_raced_completion"] = raced
server_total = server["ok"] + server["cancelled"] + server["deadline"]
client_total = client_ok + client_cancelled + client_deadline
if server_total != client_total:
    problems.append(f"requests: server {server_total} vs clients {client_total}")
if not 0 <= raced <= race_bound:
    problems.append(f"ok: server {server['ok']} vs clients {client_ok}")
if server["deadline"] != client_deadline:
    problems.append(f"deadline: server {server['deadline']} vs clients {client_deadline}")
if b.get("failed", 0) or mixed.get("n4_fail", 0) or mixed.get("bad_accepted", 0) \
        or mixed.get("bad_other", 0) or mixed.get("deadline_other", 0):
    problems.append("a client saw an unexpected failure or acceptance")
for g, v in report["gauges_end"].items():
    if v != 0: problems.append(f"{g} = {v:g} at idle")
report["problems"] = problems
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=2)
print(json.dumps(report, indent=2))
sys.exit(1 if problems else 0)
PY
rc=$?
kill -TERM "${pid}" 2>/dev/null
wait "${pid}" 2>/dev/null
echo "soak.sh: stratad exit $?, report in ${out}/report.json"
exit "${rc}"
