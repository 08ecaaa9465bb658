"""files/serve-loop.sh, the head's scheduler sidecar, run for real with fake `ray`, `python` and
`lorafarm` on PATH: it waits for the cluster, starts the scheduler only when missing, and
restarts it on a tenants change only when asked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from helpers import ROOT

SERVE_LOOP = ROOT / "helm" / "lorafarm" / "files" / "serve-loop.sh"

FAKE_RAY = """#!/bin/sh
echo "ray $*" >> "$CALLS"
exit 0
"""
FAKE_LORAFARM = """#!/bin/sh
echo "lorafarm $*" >> "$CALLS"
echo alive > "$STATE_FILE"
exit 0
"""
FAKE_PYTHON = """#!/bin/sh
body=$(cat)
case "$body" in
  *list_actors*) state=$(cat "$STATE_FILE"); echo "python state-check ($state)" >> "$CALLS"
                 case "$state" in alive) exit 0;; error) exit 2;; *) exit 1;; esac;;
  *ray.kill*) echo "python kill" >> "$CALLS"; echo dead > "$STATE_FILE"; exit 0;;
esac
exit 3
"""


def run_loop(tmp_path, initial_state: str, until, extra_env=None, on_started=None):
    """Run files/serve-loop.sh with fake `ray`, `python` and `lorafarm` on PATH until `until(calls)`,
    then SIGTERM it; returns the calls made, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in {"ray": FAKE_RAY, "lorafarm": FAKE_LORAFARM, "python": FAKE_PYTHON}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls, state = tmp_path / "calls", tmp_path / "state"
    calls.touch()
    state.write_text(initial_state)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("unknown_tenants: default\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "STATE_FILE": str(state),
           "LORAFARM_STORE": "s3://b/store", "LORAFARM_TENANTS": str(tenants), "LORAFARM_METRICS_PORT": "9100",
           "LORAFARM_HANG_TIMEOUT": "600", "LORAFARM_RESERVE_CPUS": "2", "CHECK_INTERVAL_SECONDS": "0.05",
           "RAY_ADDRESS": "10.0.0.5:6379", **(extra_env or {})}
    proc = subprocess.Popen(["bash", str(SERVE_LOOP)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        started = False
        while not until(calls.read_text().splitlines()):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"timed out; calls: {calls.read_text()}"
            if on_started and not started and calls.read_text().count("state-check") >= 2:
                on_started(tenants)
                started = True
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0  # a SIGTERM ends the loop promptly and cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
    return calls.read_text().splitlines()


def test_serve_loop_starts_the_scheduler_when_missing(tmp_path):
    calls = run_loop(tmp_path, "dead", lambda c: sum("state-check (alive)" in x for x in c) >= 3)
    assert calls[0] == "ray health-check --address 10.0.0.5:6379"  # waits for the cluster first
    serves = [c for c in calls if c.startswith("lorafarm")]
    assert serves == [f"lorafarm serve --store s3://b/store --hang-timeout 600 --reserve-cpus 2 --metrics-port 9100 "
                      f"--tenants {tmp_path / 'tenants.yaml'}"]  # once: later checks find it alive


def test_serve_loop_leaves_a_live_scheduler_alone(tmp_path):
    calls = run_loop(tmp_path, "alive", lambda c: sum("state-check" in x for x in c) >= 4)
    assert not [c for c in calls if c.startswith("lorafarm") or "kill" in c]


def test_serve_loop_runs_serve_when_the_check_fails(tmp_path):
    # `lorafarm serve` is idempotent, so an unanswered check falls back to it
    calls = run_loop(tmp_path, "error", lambda c: any(x.startswith("lorafarm serve") for x in c))
    assert "python state-check (error)" in calls


def test_serve_loop_restarts_on_tenants_change_only_when_asked(tmp_path):
    change = lambda tenants: tenants.write_text("unknown_tenants: reject\n")  # noqa: E731
    calls = run_loop(tmp_path / "on", "alive", lambda c: any(x.startswith("lorafarm serve") for x in c),
                     extra_env={"RESTART_ON_CONFIG_CHANGE": "true"}, on_started=change)
    assert calls.index("python kill") < next(i for i, c in enumerate(calls) if c.startswith("lorafarm serve"))
    (tmp_path / "off").mkdir()
    calls = run_loop(tmp_path / "off", "alive", lambda c: sum("state-check" in x for x in c) >= 6,
                     on_started=change)
    assert not [c for c in calls if "kill" in c or c.startswith("lorafarm")]


def test_serve_loop_script_parses():
    subprocess.run(["bash", "-n", str(SERVE_LOOP)], check=True)
    # its embedded Python must compile too
    text = (SERVE_LOOP).read_text()
    for body in re.findall(r"<<'PY'\n(.*?)\nPY\n", text, re.S):
        compile(body, "serve-loop.sh", "exec")
