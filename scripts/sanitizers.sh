#!/usr/bin/env bash
# Sanitizer builds of the test suite (docs/testing.md, "What runs where"):
#   asan  ASan+UBSan build of every test binary and the daemon in
#         build-asan/, and the whole C++ suite run there (the integration
#         tests start build-asan/bin/stratad, so the daemon is checked too);
#   tsan  TSan build in build-tsan/ of the scheduler, server and kernel
#         (thread pool) tests, and of the engine tests whose steps hand
#         the propagated K/V to a pool worker (early exits), run there.
# Both without CUDA, in Release with frame pointers. A sanitizer report fails
# the test that triggered it.
#
#   scripts/sanitizers.sh [asan|tsan|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
jobs=$(nproc)
# -O1: the sanitizers find the same bugs, and the builds compile about
# twice as fast as at -O3 (the CI budget is build time, docs/testing.md).
common=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG"
        -DSTRATA_ENABLE_CUDA=OFF -DSTRATA_WERROR=ON)

if [[ ${which} == asan || ${which} == all ]]; then
  echo "== ASan+UBSan: build"
  cmake -S . -B build-asan "${common[@]}" \
    -DSTRATA_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j "${jobs}"
  echo "== ASan+UBSan: tests"
  # The shell-driven checks (configs, Prometheus, include rules) run no
  # code of ours that the plain stage does not; they are left to it.
  (cd build-asan &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j "${jobs}" \
      -E '^(deploy_configs|prometheus_scrape|include_rules)$')
fi

if [[ ${which} == tsan || ${which} == all ]]; then
  echo "== TSan: build"
  cmake -S . -B build-tsan "${common[@]}" -DSTRATA_SANITIZE=thread >/dev/null
  cmake --build build-tsan -j "${jobs}" --target strata_scheduler_tests \
    strata_server_tests strata_kernels_tests strata_engine_tests
  echo "== TSan: tests"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=${PWD}/tests/tsan.supp"
  build-tsan/bin/strata_scheduler_tests
  build-tsan/bin/strata_server_tests
  build-tsan/bin/strata_kernels_tests --gtest_filter='ThreadPool*'
  # Steps with early exits: their propagated K/V run beside the sampling
  # (LlamaModel::FinishStep), on two threads in these tests.
  build-tsan/bin/strata_engine_tests \
    --gtest_filter='RecursiveModelTest.*:*ForcedExitTest.*:ModelRunner*'
fi
