"""A real Ray head (``ray start --head --block``) on 127.0.0.1 for CLI-level tests.

It runs in its own process group so that stopping it never touches another Ray cluster on the
machine (``ray stop`` would kill every one). Ports are free ephemeral ones, outside Ray's
worker-port range.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, free_port, wait_for

BIN = Path(sys.executable).parent


class JobCommands:
    """The job commands the end-to-end tests repeat, through the CLI (``lorafarm``/``lorafarm_json``
    and ``tmp`` come from the class that mixes this in)."""

    tmp: Path

    def submit_spec(self, spec: dict) -> str:
        """Submit ``spec`` (written to ``tmp/<name>.yaml``); its job id."""
        path = self.tmp / f"{spec['name']}.yaml"
        path.write_text(json.dumps(spec))
        return self.lorafarm_json("submit", str(path))["job_id"]

    def status(self, job_id: str) -> dict:
        return self.lorafarm_json("status", job_id)

    def events(self, job_id: str) -> list[dict]:
        proc = self.lorafarm("events", job_id, "--json", check=True)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


class RayHead(JobCommands):
    def __init__(self, tmp: Path, num_cpus: int = 6, env: dict[str, str] | None = None):
        self.tmp = tmp
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # a test cluster stops at once: no 30 s drain on SIGTERM while actors (the scheduler) live
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            # jobs on a test cluster step at most every 2 s (lorafarm.worker.recipe.STEP_FLOOR_S): the
            # tests here kill workers, nodes and the scheduler, or preempt, while a job trains
            "LORAFARM_TEST_STEP_FLOOR_S": "2.0",
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)
        log = open(tmp / "ray-head.log", "w")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--num-cpus", str(num_cpus),
             "--disable-usage-stats", "--temp-dir", str(tmp / "ray"),
             # every fixed default port too: another Ray on this machine may hold them
             "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
             "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
             "--metrics-export-port", str(free_port())],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.client_env = {**self.env, "RAY_ADDRESS": self.address}
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.tmp / 'ray-head.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    up = r.status == 200
            except urllib.error.HTTPError:
                up = True  # it answers (401 when token auth is on)
            except OSError:
                up = False
            # the job agent comes up after the dashboard: a trivial job proves submissions work
            if up and self.ray("job", "submit", "--address", self.dashboard, "--", "true",
                               timeout=60).returncode == 0:
                return
            time.sleep(1.0)
        raise TimeoutError("the Ray head did not come up")

    def lorafarm(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "lorafarm"), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, env={**self.client_env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"lorafarm {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
        return proc

    def lorafarm_json(self, *args: str, **kw):
        proc = self.lorafarm(*args, "--json", check=True, **kw)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def ray(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        e = {**self.env, **(env or {})}
        return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, env=e)

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, env=self.client_env)

    def scheduler_lines(self, last: int = 30) -> list[str]:
        """The scheduler's own log lines (``lorafarm scheduler: …``) from the head's Ray session logs,
        the last ``last`` of them: what a failing test prints to say what the scheduler saw."""
        lines = []
        for path in sorted((self.tmp / "ray").glob("session_*/logs/*.out")):
            try:
                lines += [ln for ln in path.read_text(errors="replace").splitlines() if "lorafarm scheduler" in ln]
            except OSError:
                continue
        return lines[-last:]

    def stop(self) -> None:
        # SIGTERM to `ray start` alone (the node's drain is off, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0:
        # with the scheduler actor alive it waited out 30 s); the SIGKILL to the group afterwards
        # reaps whatever is left (dashboard helpers).
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


# the name the scheduler tests import; one implementation, in helpers.py
wait_until = wait_for
