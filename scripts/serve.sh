#!/usr/bin/env bash
# Builds Strata and starts the daemon on the bundled default model.
# Extra arguments go to stratad (e.g. --port=50052, --host=0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
exec build/bin/stratad --model=models/strata-recursive-tiny "$@"
