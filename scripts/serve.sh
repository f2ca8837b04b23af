#!/usr/bin/env bash
# Builds the daemon and the client only (not every test and benchmark, so
# the first token comes sooner) and starts stratad on the bundled trained
# model, with gRPC on 50051 and the OpenAI-compatible HTTP API on 8000.
# Extra arguments go to stratad (e.g. --http_port=8080, --host=0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target stratad strata-cli
http_port=8000
for arg in "$@"; do
  case "${arg}" in --http_port=*) http_port="${arg#*=}" ;; esac
done
cat <<MSG
Starting stratad. Once it says "listening", try:
  curl http://127.0.0.1:${http_port}/v1/completions \\
    -H 'Content-Type: application/json' \\
    -d '{"model": "strata-recursive-tiny", "prompt": "Once upon a time", "max_tokens": 32}'
  build/bin/strata-cli complete "Once upon a time"
MSG
exec build/bin/stratad --model=models/strata-recursive-tiny --http_port=8000 "$@"
