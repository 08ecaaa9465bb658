#!/usr/bin/env bash
# Set everything up on a fresh machine and run the whole test suite (unit + integration).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not integration"` for the fast part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"   # a stray ~/.ray/auth_token must not turn auth on
export LORAFARM_CACHE="${LORAFARM_CACHE:-$PWD/.cache/lorafarm}"
.venv/bin/ruff check lorafarm tests bench jobs
set +e
.venv/bin/python -m pytest -q --durations=40 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
