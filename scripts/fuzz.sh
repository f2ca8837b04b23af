#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, ASan and UBSan into
# build-fuzz/ and runs each for a bounded time from its seed corpus. Fails on
# a crash, a sanitizer report, a leak, an input slower than 10 s or one using
# over 2 GB. docs/testing.md says what each target covers.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default $STRATA_FUZZ_SECONDS or 30)
#
# New corpus entries go to build-fuzz/corpus/ (not the tree); a crashing
# input lands in build-fuzz/artifacts/. Fix the bug, then copy the input into
# tests/fuzz/corpus/<target>/: every build replays that folder as a test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${STRATA_FUZZ_SECONDS:-30}}
targets=(request safetensors model_config tokenizer_json chat_template
         incremental_detokenizer)

CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release \
  -DSTRATA_ENABLE_CUDA=OFF -DSTRATA_FUZZ=ON \
  -DSTRATA_SANITIZE=address,undefined >/dev/null
cmake --build build-fuzz -j "$(nproc)" \
  --target $(printf "strata_%s_fuzzer " "${targets[@]}") 2>&1 | tail -n 3 \
  || { echo "fuzz.sh: build failed" >&2; exit 1; }

failed=()
mkdir -p build-fuzz/artifacts
for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/${t}
  mkdir -p "${corpus}"
  echo "== fuzz ${t} (${seconds} s)"
  if ! build-fuzz/bin/strata_${t}_fuzzer -max_total_time="${seconds}" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/artifacts/${t}-" \
      "${corpus}" "tests/fuzz/corpus/${t}" >"build-fuzz/${t}.log" 2>&1; then
    failed+=("${t}")
    tail -n 40 "build-fuzz/${t}.log"
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" \
      "build-fuzz/${t}.log" | tr '\n' ' '
    echo
  fi
done
if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in build-fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds} s each, no finding"
