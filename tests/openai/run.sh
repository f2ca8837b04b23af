#!/usr/bin/env bash
# ctest openai_client: installs the pinned official `openai` npm client from
# package-lock.json (npm ci, once) and runs the node tests against real
# stratad processes built in $1 (build/bin).
set -euo pipefail
cd "$(dirname "$0")"
export STRATA_BIN_DIR="${1:-../../build/bin}"
if [[ ! -f node_modules/openai/package.json ]] ||
   ! grep -q "\"version\": \"$(node -p "require('./package.json').dependencies.openai")\"" \
       node_modules/openai/package.json; then
  npm ci --no-audit --no-fund
fi
exec node --test --test-concurrency=1 ./*.test.mjs
