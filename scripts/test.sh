#!/usr/bin/env bash
# Builds Strata with warnings as errors and runs every test (unit and
# integration; the integration tests start the real daemon on loopback),
# then the sanitizer and fuzz stages (docs/testing.md says what runs where
# and how long each takes on 2 cores):
#   STRATA_TEST_SANITIZERS=0  skips the ASan+UBSan and TSan builds and runs;
#   STRATA_TEST_FUZZ=0        skips the libFuzzer runs;
#   STRATA_FUZZ_SECONDS=N     seconds per fuzz target (default 30).
# Extra arguments go to the plain stage's ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo "== test.sh: $1 ($(date -u +%T))"; }
start=$(date +%s)

stage "build and test (build/)"
./scripts/build.sh -DSTRATA_WERROR=ON
(cd build && ctest --output-on-failure -j "$(nproc)" "$@")

if [[ ${STRATA_TEST_SANITIZERS:-1} != 0 ]]; then
  stage "sanitizers (build-asan/, build-tsan/)"
  ./scripts/sanitizers.sh all
fi
if [[ ${STRATA_TEST_FUZZ:-1} != 0 ]]; then
  stage "fuzz (build-fuzz/)"
  ./scripts/fuzz.sh
fi
stage "done in $(( $(date +%s) - start )) s"
