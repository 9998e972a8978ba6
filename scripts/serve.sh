#!/usr/bin/env bash
# Sets up (if needed) and runs tidecast with its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tidecast serve "$@"
