#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one call (<= 8 minutes):
# prints the card, installs the build dependencies, builds with CUDA, runs
# every GPU test and the GPU benchmark, and writes a JSON summary to
# $OUT/gpu-check.json (or ./gpu-check-out/gpu-check.json).
#
#   scripts/gpu-check.sh [--quick]
#
# --quick: a 4-layer model and smaller benchmark shapes (for a short budget).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
out_dir="${OUT:-./gpu-check-out}"
mkdir -p "${out_dir}"
quick=""
if [[ "${1:-}" == "--quick" ]]; then quick="--quick"; fi

echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "${out_dir}/card.txt" || echo "nvidia-smi failed" | tee "${out_dir}/card.txt"

echo "== dependencies"
./scripts/install-deps.sh > "${out_dir}/install-deps.log" 2>&1
deps_rc=$?
echo "install-deps rc=${deps_rc}"

echo "== build (CUDA)"
jobs=$(nproc)
build_rc=0
{
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSTRATA_WERROR=ON &&
    cmake --build build -j "${jobs}" --target strata_cuda_tests strata_gpu_bench \
      strata_engine_tests strata_kernels_tests
} > "${out_dir}/build.log" 2>&1 || build_rc=$?
echo "build rc=${build_rc} ($(($(date +%s) - start)) s)"
tail -n 20 "${out_dir}/build.log"

tests_rc=-1
engine_rc=-1
bench_rc=-1
if [[ ${build_rc} -eq 0 ]]; then
  echo "== GPU tests"
  timeout 240 ./build/bin/strata_cuda_tests \
    --gtest_output="json:${out_dir}/cuda-tests.json" 2>&1 | tee "${out_dir}/cuda-tests.log" | tail -n 60
  tests_rc=${PIPESTATUS[0]}
  echo "cuda tests rc=${tests_rc} ($(($(date +%s) - start)) s)"

  echo "== CPU engine tests (the CPU path must be unchanged)"
  timeout 120 ./build/bin/strata_engine_tests > "${out_dir}/engine-tests.log" 2>&1
  engine_rc=$?
  tail -n 3 "${out_dir}/engine-tests.log"

  echo "== GPU benchmark"
  remaining=$((470 - ($(date +%s) - start)))
  if ((remaining > 30)); then
    timeout "${remaining}" ./build/bin/strata_gpu_bench ${quick} \
      --out "${out_dir}/gpu-bench.json" > "${out_dir}/gpu-bench.log" 2>&1
    bench_rc=$?
    tail -n 80 "${out_dir}/gpu-bench.log"
  else
    echo "skipped: ${remaining} s left"
  fi
fi

python3 - "${out_dir}" "${deps_rc}" "${build_rc}" "${tests_rc}" "${engine_rc}" \
  "${bench_rc}" "$(($(date +%s) - start))" <<'PY'
import json, os, sys
out, deps, build, tests, engine, bench, secs = sys.argv[1:]
summary = {"card": open(os.path.join(out, "card.txt")).read().strip(),
           "install_deps_rc": int(deps), "build_rc": int(build),
           "cuda_tests_rc": int(tests), "engine_tests_rc": int(engine),
           "bench_rc": int(bench), "seconds": int(secs)}
try:
    t = json.load(open(os.path.join(out, "cuda-tests.json")))
    summary["cuda_tests"] = {k: t.get(k) for k in ("tests", "failures", "disabled", "errors")}
    summary["cuda_test_failures"] = [
        s["name"] + "." + c["name"] for s in t.get("testsuites", [])
        for c in s.get("testsuite", []) if c.get("failures")]
except Exception as e:  # no test report: the build or the run failed
    summary["cuda_tests"] = {"error": str(e)}
try:
    summary["bench"] = json.load(open(os.path.join(out, "gpu-bench.json")))
except Exception as e:
    summary["bench"] = {"error": str(e)}
json.dump(summary, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=2))
PY
[[ ${build_rc} -eq 0 && ${tests_rc} -eq 0 ]]
