"""The scheduler: one detached, named Ray actor per cluster (namespace ``lorafarm``).

This is the shell around :class:`~lorafarm.scheduler.core.SchedulerCore`: it hands the core
the system clock, the Ray launcher and Ray's capacity view, serves the API on a thread pool
(``max_concurrency``, so ``status`` answers while jobs train) and runs the admission loop.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from ..events import Event
from ..spec import load_tenants
from ..storage import Store
from .capacity import RayCapacity
from .core import SchedulerCore
from .launcher import RayLauncher
from .names import NAMESPACE, RUNNER_PREFIX, SCHEDULER_NAME
from .seams import SystemClock

__all__ = ["NAMESPACE", "RUNNER_PREFIX", "SCHEDULER_NAME", "Scheduler", "SchedulerCore"]

TICK_S = 0.25


@ray.remote(num_cpus=0, max_concurrency=64, max_restarts=0)
class Scheduler:
    """The API of the service (the CLI's ``call`` names these methods) and a background loop."""

    def __init__(self, store_uri: str, tenants_text: str | None = None, metrics_port: int | None = None,
                 hang_timeout_s: float = 1800.0, reserve_cpus: float = 0.0):
        self.core = SchedulerCore(
            Store.open(store_uri), load_tenants(tenants_text or None), SystemClock(),
            RayLauncher(ray.get_runtime_context().current_actor), RayCapacity(reserve_cpus),
            hang_timeout_s=hang_timeout_s,
        )
        self.metrics_port = metrics_port
        if metrics_port is not None:
            self.core.metrics.serve(metrics_port)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="lorafarm-admission", daemon=True)
        self._loop.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.core.tick()
            except Exception as e:  # noqa: BLE001 - the loop must survive any one bad tick
                print(f"lorafarm scheduler: tick failed: {type(e).__name__}: {e}", flush=True)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.core.submit(spec)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.core.status(job_id)

    def list(self, tenant: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return self.core.list(tenant, state)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.core.events(job_id)

    def logs(self, job_id: str, offset: int = 0):
        return self.core.logs_since(job_id, offset)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.core.cancel(job_id)

    def tenants(self) -> list[dict[str, Any]]:
        return self.core.tenants_usage()

    def report(self, job_id: str, event: Event) -> None:
        self.core.report(job_id, event)

    def ping(self) -> dict[str, Any]:
        return self.core.ping()
