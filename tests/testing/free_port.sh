# Sourced by the shell tests: strata_free_port VAR sets VAR to a loopback TCP
# port that nobody listens on and that no other test process is handed while
# this shell lives. Same rules and lock files as FreePort() in
# tests/testing/net_util.cc: a port below the kernel's ephemeral range (which
# serves bind(0) and the local side of outgoing connections), claimed by an
# flock on /tmp/strata-test-ports-UID/PORT that this shell holds until it
# exits. Call it directly, not in $(...): a subshell's lock dies with it.
strata_free_port() {
  local -n strata_port_out="$1"
  local dir="/tmp/strata-test-ports-$(id -u)"
  mkdir -p -m 0700 "${dir}"
  local low high
  read -r low high </proc/sys/net/ipv4/ip_local_port_range || low=32768
  ((low > 21000)) || low=32768
  local attempt port fd
  for ((attempt = 0; attempt < 1000; ++attempt)); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % (low - 20000)))
    exec {fd}>"${dir}/${port}" || continue
    if flock -n "${fd}" && /usr/bin/python3 -c \
      'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
      "${port}" 2>/dev/null; then
      strata_port_out="${port}"
      return 0
    fi
    exec {fd}>&-
  done
  echo "strata_free_port: no free port found" >&2
  return 1
}
