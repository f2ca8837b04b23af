#!/usr/bin/env bash
# Builds Strata with warnings as errors and runs every test (unit and
# integration; the integration tests start the real daemon on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh -DSTRATA_WERROR=ON
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
