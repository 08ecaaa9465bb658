#!/usr/bin/env bash
# One-stop set-up on a fresh machine: a virtualenv in .venv with lorafarm and its test extras.
# Idempotent: a second run only checks. Pass --system-test-deps to also install Debian
# packages the integration tests use (needs root / apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: the CPU build 2.13.0 is on local disk; an unpinned resolve
# would fetch a multi-GB CUDA build.
pipi() {  # pip install, quiet unless it fails
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
pipi "torch==2.13.0"
pipi -e ".[test]"
.venv/bin/python -c "import lorafarm, torch, ray, deepspeed, peft" >/dev/null
echo "setup: ok ($(.venv/bin/python -c 'import torch,ray,deepspeed,transformers,peft;print(f"torch {torch.__version__}, ray {ray.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'))"
# Debian packages the tests use (Prometheus for the scrape test, promtool for rule tests).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "setup: could not install Debian prometheus; its tests will fail" >&2
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "setup: could not install Debian prometheus; its tests will fail" >&2
  fi
fi
