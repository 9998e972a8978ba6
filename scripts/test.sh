#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite: lint, types, then pytest.
#
# Two pytest runs go side by side: the unit and integration tests (real servers,
# no media pipeline) in the background, and the end-to-end tests (ffmpeg, whole
# servers, the browser) one at a time in the foreground, the heavy ones last,
# once the others are done. Both must pass; the background run's report follows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests
.venv/bin/mypy
set +e
unit_log=$(mktemp -t tidecast-unit.XXXXXX)
.venv/bin/python -m pytest -p no:cacheprovider -m "not e2e and not browser" "$@" >"$unit_log" 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null || true' EXIT  # an interrupted run leaves nothing behind
.venv/bin/python -m pytest -p no:cacheprovider -m "e2e or browser" --durations=15 "$@"
e2e_rc=$?
wait "$unit_pid"
unit_rc=$?
trap - EXIT
echo
echo "----- unit and integration tests -----"
cat "$unit_log"
rm -f "$unit_log"
set -e
# pytest exits 5 when it collected nothing: fine for one half (a path given on the
# command line may hold only one kind), a failure when both collected nothing
if [[ $e2e_rc -eq 5 && $unit_rc -eq 5 ]]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
for rc in "$e2e_rc" "$unit_rc"; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then
    exit "$rc"
  fi
done
exit 0
