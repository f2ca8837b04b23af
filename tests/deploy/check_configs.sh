#!/usr/bin/env bash
# Checks the deployment files in deploy/ with the tools that consume them:
#   - Prometheus: promtool check config / check rules, and the alert unit
#     tests (promtool test rules deploy/prometheus/alerts_test.yml);
#   - Grafana: the dashboard parses as JSON and every panel query parses as
#     PromQL;
#   - metric names used in deploy/ are the ones docs/metrics.md documents;
#   - Kubernetes: every manifest parses as YAML with the expected kinds;
#   - nginx: `nginx -t` on deploy/nginx/strata.conf, then a live run on
#     loopback with stand-in replicas (nginx h2c servers) behind the config:
#     one refusing connections (dead), one answering 503 (draining), one
#     resetting every call before its response headers, and two healthy
#     ones. Calls go out over HTTP/2; those that meet the dead replica are
#     retried elsewhere; the draining replica's 503 and the resetting
#     replica's reset (as 502) reach the client (nginx cannot re-send a gRPC
#     call it already sent; see the config's comments); unknown services get
#     404 (gRPC UNIMPLEMENTED).
# Needs promtool, nginx, curl and python3-yaml (scripts/install-deps.sh).
# Usage: tests/deploy/check_configs.sh   (from anywhere; exit 0 = all passed)
set -uo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
python=/usr/bin/python3
tmp="$(mktemp -d)"
nginx_pids=()
cleanup() {
  for pid in "${nginx_pids[@]}"; do kill "${pid}" 2>/dev/null; done
  rm -rf "${tmp}"
}
trap cleanup EXIT

passed=0
failed=0
check() {
  local name="$1"
  shift
  local log="${tmp}/check.log"
  if "$@" >"${log}" 2>&1; then
    passed=$((passed + 1))
    echo "PASS ${name}"
  else
    failed=$((failed + 1))
    echo "FAIL ${name}"
    sed 's/^/    /' "${log}"
  fi
}

for tool in promtool nginx curl "${python}"; do
  if ! command -v "${tool}" >/dev/null; then
    echo "check_configs: ${tool} not found; run scripts/install-deps.sh" >&2
    exit 1
  fi
done

# --- Prometheus ----------------------------------------------------------
check "promtool check config prometheus.yml" \
  promtool check config "${root}/deploy/prometheus/prometheus.yml"
check "promtool check rules alerts.yml" \
  promtool check rules "${root}/deploy/prometheus/alerts.yml"
check "promtool test rules alerts_test.yml" \
  bash -c "cd '${root}/deploy/prometheus' && promtool test rules alerts_test.yml"

# --- Grafana -------------------------------------------------------------
# Each panel query becomes a recording rule so promtool parses it; Grafana's
# variables get stand-in values first.
dashboard_rules() {
  "${python}" - "${root}/deploy/grafana/strata-dashboard.json" \
    "${tmp}/dashboard_rules.yml" <<'EOF'
import json, sys, yaml
with open(sys.argv[1]) as f:
    dash = json.load(f)
rules = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            expr = (t["expr"].replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"))
            rules.append({"record": "dashboard:panel_%d:%s" % (p["id"], t["refId"]),
                          "expr": expr})
walk(dash["panels"])
if len(rules) < 10:
    sys.exit("only %d panel queries found" % len(rules))
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    sys.exit("duplicate panel ids")
with open(sys.argv[2], "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
EOF
  promtool check rules "${tmp}/dashboard_rules.yml"
}
check "grafana dashboard: JSON and PromQL of every panel" dashboard_rules

# --- Metric names --------------------------------------------------------
# Every strata_* name used by the alerts, the dashboard and the autoscaler
# is documented (docs/metrics.md), which is kept in step with
# server/metrics.cc by tests/server/metrics_test.cc's list.
metric_names() {
  "${python}" - "${root}" <<'EOF'
import re, sys, pathlib
root = pathlib.Path(sys.argv[1])
documented = set(re.findall(r"`(strata_[a-z0-9_]+)", (root / "docs/metrics.md").read_text()))
if len(documented) < 20:
    sys.exit("docs/metrics.md documents only %d metrics" % len(documented))
used = {}
for path in list((root / "deploy").rglob("*.y*ml")) + list((root / "deploy").rglob("*.json")):
    for name in re.findall(r"\bstrata_[a-z0-9_]+", path.read_text()):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in documented and name not in documented:
            used.setdefault(name, set()).add(str(path.relative_to(root)))
for name, paths in sorted(used.items()):
    print("undocumented metric %s in %s" % (name, ", ".join(sorted(paths))))
sys.exit(1 if used else 0)
EOF
}
check "metric names in deploy/ are documented" metric_names

# --- Kubernetes ----------------------------------------------------------
k8s_yaml() {
  "${python}" - "${root}/deploy/k8s" <<'EOF'
import sys, pathlib, yaml
kinds = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        for key in ("apiVersion", "kind"):
            if key not in doc:
                sys.exit("%s: a document without %s" % (path.name, key))
        name = doc.get("metadata", {}).get("name", "")
        kinds.setdefault(doc["kind"], []).append(name)
        print("%s: %s %s" % (path.name, doc["kind"], name))
want = {"Deployment": 1, "Service": 2, "PodDisruptionBudget": 1,
        "HorizontalPodAutoscaler": 1, "ServiceMonitor": 1, "ConfigMap": 1,
        "Kustomization": 1}
for kind, n in want.items():
    if len(kinds.get(kind, [])) != n:
        sys.exit("want %d %s, found %s" % (n, kind, kinds.get(kind)))
# The grace period must outlast the drain (--shutdown_grace) plus preStop.
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1] + "/deployment.yaml")))
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
grace = [a for a in c["args"] if a.startswith("--shutdown_grace=")][0]
drain_s = int(grace.split("=")[1].rstrip("s"))
pre_stop_s = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
if spec["terminationGracePeriodSeconds"] <= drain_s + pre_stop_s:
    sys.exit("terminationGracePeriodSeconds %d <= shutdown_grace %d + preStop %d"
             % (spec["terminationGracePeriodSeconds"], drain_s, pre_stop_s))
if c["readinessProbe"]["grpc"]["service"] != "strata.v1.Generation":
    sys.exit("readiness probe must ask for strata.v1.Generation")
EOF
}
check "kubernetes manifests parse" k8s_yaml

# --- nginx ---------------------------------------------------------------
# Six distinct free loopback ports (all held open while choosing).
read -r lb_port dead_port draining_port resetting_port r1_port r2_port < <("${python}" -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
# dead_port: nothing listens there, so connections are refused.
# The same for the HTTP API: balancer, dead, draining, two healthy.
read -r http_lb_port http_dead_port http_draining_port http_r1_port http_r2_port < <("${python}" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
export HTTP_LB_PORT="${http_lb_port}"
export HTTP_REPLICA_PORTS="${http_dead_port} ${http_draining_port} ${http_r1_port} ${http_r2_port}"

# The shipped config with its replica lines rewritten to the loopback
# stand-ins (the last line repeated for the extra one), and the listener
# moved to a free loopback port.
nginx_test_config() {
  "${python}" - "${root}/deploy/nginx/strata.conf" "${tmp}/strata.conf" \
    "${lb_port}" "${dead_port}" "${draining_port}" "${resetting_port}" \
    "${r1_port}" "${r2_port}" <<'EOF'
import re, sys
src, dst, lb, *replicas = sys.argv[1:]
text = open(src).read()
lines = re.findall(r"^\s*server\s+\S+:50051\b.*$", text, flags=re.M)
if len(lines) != 3:
    sys.exit("expected the 3 example replica lines in the upstream block")
new = [re.sub(r"\S+:50051", "127.0.0.1:" + port, lines[min(i, 2)])
       for i, port in enumerate(replicas)]
text = text.replace(lines[0], "\n".join(new[:2]), 1)
text = text.replace(lines[1], new[2], 1)
text = text.replace(lines[2], "\n".join(new[3:]), 1)
text, n = re.subn(r"listen 50051 http2;", "listen 127.0.0.1:%s http2;" % lb, text)
if n != 1:
    sys.exit("expected one `listen 50051 http2;`")
# The HTTP API's upstream: a dead, a draining (503) and two healthy HTTP/1.1
# stand-ins, ports from the environment; its listener on a free port.
import os
http_lines = re.findall(r"^\s*server\s+\S+:8000\b.*$", text, flags=re.M)
if len(http_lines) != 3:
    sys.exit("expected the 3 example replica lines in the strata_http block")
ports = os.environ["HTTP_REPLICA_PORTS"].split()
new = [re.sub(r"\S+:8000", "127.0.0.1:" + port, http_lines[min(i, 2)])
       for i, port in enumerate(ports)]
text = text.replace(http_lines[0], "\n".join(new[:2]), 1)
text = text.replace(http_lines[1], new[2], 1)
text = text.replace(http_lines[2], "\n".join(new[3:]), 1)
text, n = re.subn(r"listen 8000;", "listen 127.0.0.1:%s;" % os.environ["HTTP_LB_PORT"], text)
if n != 1:
    sys.exit("expected one `listen 8000;`")
open(dst, "w").write(text)
open(dst, "w").write(text)
EOF
}
check "nginx test copy of strata.conf (replicas on loopback)" nginx_test_config

mkdir -p "${tmp}/nginx"
cat >"${tmp}/nginx.conf" <<EOF
# Test wrapper: the shipped config inside a minimal main config.
pid ${tmp}/nginx/nginx.pid;
error_log ${tmp}/nginx/error.log info;
worker_processes 1;
events { worker_connections 256; }
http {
  access_log ${tmp}/nginx/access.log;
  client_body_temp_path ${tmp}/nginx/body;
  proxy_temp_path ${tmp}/nginx/proxy;
  fastcgi_temp_path ${tmp}/nginx/fastcgi;
  uwsgi_temp_path ${tmp}/nginx/uwsgi;
  scgi_temp_path ${tmp}/nginx/scgi;
  include ${tmp}/strata.conf;
  # Stand-in replicas: h2c servers that name themselves, one draining
  # replica answering 503, and one that resets every call before answering
  # (444 closes the request: RST_STREAM on HTTP/2).
  server {
    listen 127.0.0.1:${draining_port} http2;
    access_log ${tmp}/nginx/draining.log;
    location / { return 503; }
  }
  server {
    listen 127.0.0.1:${resetting_port} http2;
    location / { return 444; }
  }
  server {
    listen 127.0.0.1:${r1_port} http2;
    location / { default_type text/plain; return 200 "replica-1 \$request_method \$uri\n"; }
  }
  server {
    listen 127.0.0.1:${r2_port} http2;
    location / { default_type text/plain; return 200 "replica-2 \$request_method \$uri\n"; }
  }
  # HTTP API stand-ins: one draining (503), two healthy.
  server {
    listen 127.0.0.1:${http_draining_port};
    access_log ${tmp}/nginx/http_draining.log;
    location / { return 503; }
  }
  server {
    listen 127.0.0.1:${http_r1_port};
    location / { default_type text/event-stream; return 200 "data: http-replica-1 \$request_method \$uri\n\n"; }
  }
  server {
    listen 127.0.0.1:${http_r2_port};
    location / { default_type text/event-stream; return 200 "data: http-replica-2 \$request_method \$uri\n\n"; }
  }
}
EOF

check "nginx -t on deploy/nginx/strata.conf" \
  nginx -t -q -p "${tmp}/nginx" -c "${tmp}/nginx.conf" -e "${tmp}/nginx/error.log"

# Starts nginx on the test config (its pid in nginx_pid) and waits until
# the URL answers; extra arguments go to curl.
start_nginx() {
  local url="$1"
  shift
  nginx -p "${tmp}/nginx" -c "${tmp}/nginx.conf" -e "${tmp}/nginx/error.log" \
    -g "daemon off; user $(id -un);" &
  nginx_pid=$!
  nginx_pids+=("${nginx_pid}")
  for _ in $(seq 50); do
    curl -s -o /dev/null "$@" "${url}" && break
    sleep 0.1
  done
}

stop_nginx() {
  kill "${nginx_pid}"
  wait "${nginx_pid}" 2>/dev/null
}

nginx_live() {
  start_nginx "http://127.0.0.1:${lb_port}/" --http2-prior-knowledge
  local served="" refused=0 reset=0 out
  # gRPC calls are HTTP/2 POSTs with content-type application/grpc. With
  # least_conn and no call in flight, ties rotate round robin: ten calls
  # try every replica.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    out=$(curl -sS --http2-prior-knowledge -X POST \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @/dev/null -o "${tmp}/body" -w '%{http_code} %{http_version}' \
      "http://127.0.0.1:${lb_port}/strata.v1.Generation/Complete") || return 1
    echo "call: ${out} $(head -c 60 "${tmp}/body" | tr '\n' ' ')"
    case "${out} $(cat "${tmp}/body")" in
      "200 2 replica-"[12]" POST /strata.v1.Generation/Complete"*)
        served+="$(cut -d' ' -f1 "${tmp}/body") " ;;
      "503 2 "*) refused=$((refused + 1)) ;; # the draining replica's answer
      "502 2 "*) reset=$((reset + 1)) ;;     # the resetting replica's
      *) echo "unexpected answer"; return 1 ;;
    esac
  done
  # The dead replica was tried and never surfaced (its calls were retried),
  # both healthy replicas served, and the draining replica's refusals reached
  # the client unchanged: nginx does not re-send a gRPC call it already sent.
  grep -q "connect() failed (111" "${tmp}/nginx/error.log" ||
    { echo "the dead replica was never tried"; return 1; }
  [[ "${served}" == *replica-1* && "${served}" == *replica-2* ]] ||
    { echo "calls did not reach both healthy replicas: ${served}"; return 1; }
  ((refused > 0)) ||
    { echo "no call reached the draining replica"; return 1; }
  # A call reset before any response header (the `invalid_header` case) is
  # not re-sent either: the client gets 502 (gRPC UNAVAILABLE). If this
  # starts failing, nginx learned to retry gRPC calls: revisit the config's
  # grpc_next_upstream and docs/operations.md.
  ((reset > 0)) ||
    { echo "no 502: were calls reset before headers retried?"; return 1; }
  grep -q "upstream rejected request with error" "${tmp}/nginx/error.log" ||
    { echo "the resetting replica was never tried"; return 1; }
  out=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' \
    -X POST -H 'content-type: application/grpc' \
    "http://127.0.0.1:${lb_port}/unknown.Service/Method") || return 1
  [[ "${out}" == 404 ]] || { echo "unknown service answered ${out}"; return 1; }
  stop_nginx
}
check "nginx live: h2c POSTs, retry past a dead replica, no re-send after a reset or 503, 404s" \
  nginx_live

# The HTTP API block: every POST reaches a healthy replica (a dead or
# draining one is skipped: proxy_next_upstream with non_idempotent), and SSE
# is not buffered.
nginx_http_live() {
  grep -Pzo '(?s)location /v1/ \{[^}]*proxy_buffering off;' \
    "${root}/deploy/nginx/strata.conf" >/dev/null ||
    { echo "the /v1/ location does not turn proxy_buffering off"; return 1; }
  start_nginx "http://127.0.0.1:${http_lb_port}/"
  local served="" out
  for _ in 1 2 3 4 5 6 7 8; do
    out=$(curl -sS -X POST -H 'content-type: application/json' \
      -d '{"prompt": "x"}' -o "${tmp}/http_body" -w '%{http_code}' \
      "http://127.0.0.1:${http_lb_port}/v1/completions") || return 1
    echo "http call: ${out} $(head -c 60 "${tmp}/http_body" | tr '\n' ' ')"
    [[ "${out}" == 200 ]] || { echo "a request was not retried"; return 1; }
    served+="$(cut -d' ' -f2 "${tmp}/http_body") "
  done
  [[ "${served}" == *http-replica-1* && "${served}" == *http-replica-2* ]] ||
    { echo "requests did not reach both healthy replicas: ${served}"; return 1; }
  [[ -s "${tmp}/nginx/http_draining.log" ]] ||
    { echo "the draining replica was never tried"; return 1; }
  out=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:${http_lb_port}/nope") || return 1
  [[ "${out}" == 404 ]] || { echo "unknown path answered ${out}"; return 1; }
  stop_nginx
}
check "nginx live HTTP API: POSTs retried past dead and draining (503) replicas, SSE unbuffered, 404s" \
  nginx_http_live

echo "${passed} passed, ${failed} failed"
((failed == 0))
