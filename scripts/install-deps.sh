#!/usr/bin/env bash
# Installs the Debian 12 packages Strata builds and tests with. Idempotent:
# packages already present are not touched, and apt is only called when
# something is missing. Both README commands call this first.
set -euo pipefail

# Build and test dependencies (C++ side).
PACKAGES=(
  build-essential cmake pkg-config
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  prometheus-cpp-dev
  nlohmann-json3-dev
  libpcre2-dev
  # SHA-256 of API keys (server/api_key_store.cc).
  libssl-dev
  libgtest-dev libgmock-dev
  # TLS: certificate checks (libssl-dev) and the tests' run-time CA (openssl).
  libssl-dev openssl
  # Fuzzing and sanitizer builds (libFuzzer, ASan, UBSan, TSan runtimes).
  clang libclang-rt-14-dev
  # The OpenAI-compatible HTTP API: Boost.Beast/Asio (header only).
  libboost-dev
  # tests/openai: the official `openai` npm client runs on Node from Debian
  # (npm comes with it on NodeSource builds; Debian's own is added below).
  nodejs
  # Operations checks (tests/deploy/check_configs.sh, the metrics test's
  # `promtool check metrics`, YAML parsing) and benchmark plots.
  prometheus nginx gnuplot-nox python3-yaml curl
)
# Optional extras: STRATA_DEPS_EXTRA="python3-torch ..." adds packages (used by
# tools/ scripts that regenerate reference data; CI never needs them).
if [[ -n "${STRATA_DEPS_EXTRA:-}" ]]; then
  read -r -a extra <<<"${STRATA_DEPS_EXTRA}"
  PACKAGES+=("${extra[@]}")
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
