#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries for sm_80 and sm_90 and writes a
# relocatable folder that runs on a GPU host with only the driver and the
# CUDA runtime (no compiler, no dev packages, no network):
#
#   scripts/gpu-bundle.sh OUT_DIR      (default ./gpu-bundle, git-ignored)
#   rsync -a OUT_DIR/ gpu-host:somewhere/ && ssh gpu-host somewhere/gpu-check.sh
#
# OUT_DIR/
#   bin/         strata_cuda_tests, strata_gpu_bench (+ STRATA_BUNDLE_TARGETS)
#   lib/         the shared libraries those load beyond glibc, libstdc++,
#                libgcc and the CUDA driver/runtime/cuBLAS(Lt), found via ldd
#   models/      the bundled models (tests read STRATA_MODELS_DIR)
#   gpu-check.sh scripts/gpu-check.sh, which sees bin/ next to it and runs
#                from the bundle
#   MANIFEST     source commit, architectures, what was left to the host
#
# Build: reuses build/ when it is configured with CUDA (adding 80;90 to its
# architectures if missing), else configures build-cuda/. Never installs
# anything (scripts/install-deps.sh does that on a build machine).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
out="${1:-gpu-bundle}"
archs="80;90"
targets="strata_cuda_tests strata_gpu_bench ${STRATA_BUNDLE_TARGETS:-}"

cuda_configured() {  # $1: build dir
  [[ -f "$1/CMakeCache.txt" ]] &&
    grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]*=.+' "$1/CMakeCache.txt" &&
    ! grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]*=.*NOTFOUND' "$1/CMakeCache.txt" &&
    ! grep -Eq '^STRATA_ENABLE_CUDA:BOOL=(OFF|0|FALSE|NO)$' "$1/CMakeCache.txt"
}

build="${STRATA_BUILD_DIR:-build}"
if ! cuda_configured "${build}"; then
  [[ -f "${build}/CMakeCache.txt" ]] &&
    echo "gpu-bundle: ${build}/ is a CPU-only build; using build-cuda/"
  build="build-cuda"
fi
have_archs=""
if [[ -f "${build}/CMakeCache.txt" ]]; then
  have_archs=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' \
    "${build}/CMakeCache.txt")
fi
if [[ "${have_archs}" != "${archs}" ]] || ! cuda_configured "${build}"; then
  echo "gpu-bundle: configuring ${build}/ for sm ${archs}" \
    "(was: ${have_archs:-unconfigured})"
  cmake -S . -B "${build}" -DCMAKE_BUILD_TYPE=Release -DSTRATA_WERROR=ON \
    -DSTRATA_ENABLE_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${archs}" >/dev/null
fi
cuda_configured "${build}" || {
  echo "gpu-bundle: no CUDA compiler found (nvcc); cannot build" >&2
  exit 1
}
# shellcheck disable=SC2086
cmake --build "${build}" -j "${STRATA_BUILD_JOBS:-$(nproc)}" --target ${targets}

rm -rf "${out}"
mkdir -p "${out}/bin" "${out}/lib"
for t in ${targets}; do cp "${build}/bin/${t}" "${out}/bin/"; done

# Libraries the host provides: glibc and the loader, the C++ runtime, the CUDA
# driver (must match the kernel module) and the CUDA runtime and cuBLAS(Lt)
# (must match the driver; every CUDA host has them).
# STRATA_BUNDLE_CUDA_LIBS=1 copies the runtime and cuBLAS(Lt) too (~0.5 GB),
# for a host whose runtime is older than the nvcc used here.
host_lib='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda|libnvidia-[a-z]*)\.'
if [[ "${STRATA_BUNDLE_CUDA_LIBS:-0}" != 1 ]]; then
  host_lib='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnvidia-[a-z]*)\.'
fi
declare -A copied=()
for bin in "${out}"/bin/*; do
  while read -r name arrow path _; do
    [[ "${arrow}" == "=>" ]] || continue
    if [[ "${name}" =~ ${host_lib} ]]; then continue; fi
    if [[ "${path}" == "not" ]]; then
      echo "gpu-bundle: ${bin##*/} needs ${name}, not found here" >&2
      exit 1
    fi
    if [[ -z "${copied[${name}]:-}" ]]; then
      cp -L "${path}" "${out}/lib/${name}"
      copied[${name}]=1
    fi
  done < <(ldd "${bin}")
done

cp -r models "${out}/models"
cp scripts/gpu-check.sh "${out}/gpu-check.sh"
chmod +x "${out}/gpu-check.sh"
{
  echo "commit $(git -C "${src}" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "dirty $(git -C "${src}" status --porcelain 2>/dev/null | wc -l) files"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from ${build}/"
  echo "cuda_architectures ${archs}"
  echo "nvcc $(grep -ho 'CMAKE_CUDA_COMPILER_VERSION "[^"]*"' \
    "${build}"/CMakeFiles/*/CMakeCUDACompiler.cmake | head -n 1 | cut -d'"' -f2)"
  echo "binaries ${targets}"
  echo "bundled_libs ${!copied[*]}"
  echo "host_provides glibc libstdc++ libgcc_s libcuda" \
    "$([[ "${STRATA_BUNDLE_CUDA_LIBS:-0}" == 1 ]] || echo libcudart libcublas libcublasLt)"
} > "${out}/MANIFEST"
echo "gpu-bundle: $(du -sh "${out}" | cut -f1) in ${out}/" \
  "(${#copied[@]} libraries); run ${out}/gpu-check.sh"
