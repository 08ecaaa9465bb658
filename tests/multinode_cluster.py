"""A real two-node Ray cluster on this machine: a ``ray start --head`` (:class:`RayHead`) and a
second raylet, ``ray start --address=... --block`` in its own process group, so that killing
that group is a real node loss (and starting another is a node joining).

Ray's node health check runs faster than its default here (a dead node is declared within a
few seconds instead of ~15), so that the tests need not wait for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from ray_head import BIN, JobCommands, RayHead, free_port, wait_until

FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_timeout_ms": "1000"}


class TwoNodeCluster(JobCommands):
    def __init__(self, tmp: Path, cpus_per_node: int = 2):
        self.tmp, self.cpus = tmp, cpus_per_node
        self.head = RayHead(tmp, num_cpus=cpus_per_node, env=FAST_HEALTH)
        self.store = str(tmp / "store")
        self.worker: subprocess.Popen | None = None
        self._starts = 0
        try:
            self.add_node()
        except BaseException:
            self.stop()
            raise

    def alive_nodes(self) -> int:
        proc = self.head.python("import ray; ray.init(log_to_driver=False); "
                                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        counts = [line for line in proc.stdout.splitlines() if line.strip().isdigit()]
        return int(counts[-1]) if proc.returncode == 0 and counts else -1

    def add_node(self) -> None:
        """Start the second raylet and wait until the cluster counts two alive nodes."""
        self._starts += 1
        log = open(self.tmp / f"ray-worker-{self._starts}.log", "w")  # noqa: SIM115 - the process owns it
        self.worker = subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", self.head.address, "--block", "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(self.cpus), "--disable-usage-stats", "--temp-dir", str(self.tmp / f"n{self._starts}"),
             "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
             "--min-worker-port", "33000", "--max-worker-port", "34999"],
            stdout=log, stderr=subprocess.STDOUT, env=self.head.env, start_new_session=True,
        )
        wait_until(lambda: self.alive_nodes() == 2, 120, "the second node to join")

    def kill_node(self) -> None:
        """A node loss: SIGKILL the second raylet's whole process group (its workers die with it)."""
        assert self.worker is not None
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.worker.wait(timeout=30)
        self.worker = None

    def lorafarm(self, *args, **kw):
        return self.head.lorafarm(*args, **kw)

    def lorafarm_json(self, *args, **kw):
        return self.head.lorafarm_json(*args, **kw)

    def stop(self) -> None:
        if self.worker is not None:
            self.kill_node()
        self.head.stop()
