"""The Ray launcher: one :class:`~lorafarm.scheduler.runner.Runner` actor per running job,
named ``RUNNER_PREFIX + job_id`` so that a restarted scheduler can find and stop leftovers."""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..events import RunOutcome
from ..spec import JobSpec
from .names import NAMESPACE, RUNNER_PREFIX
from .runner import Runner, orphaned_placement_groups, remove_placement_groups

SWEEP_EVERY_S = 5.0  # how often the orphaned placement groups of stopped runs are looked for


class RayLauncher:
    def __init__(self, scheduler_handle: Any):
        self.scheduler_handle = scheduler_handle  # where runners report events
        self._runs: dict[str, tuple[Any, Any]] = {}  # job id -> (runner actor, ref of its run())
        self._lock = threading.Lock()  # cancel (an API thread) and the admission loop both use it
        self._job_id = ray.get_runtime_context().get_job_id()  # the job every runner's actors belong to
        self._next_sweep = 0.0

    def start(self, job_id: str, spec: JobSpec, store_root: str, placement=()) -> None:
        """Start the job's runner; ``placement`` (node id, workers) pins its workers to those nodes."""
        # on the scheduler's node: a runner (and the Ray Train controller it owns) must outlive the
        # loss of any worker node, so that the scheduler can resize or re-queue the job
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
        runner = None
        for _ in range(100):  # a runner just killed (node lost, resize) frees its name within moments
            try:
                runner = Runner.options(name=RUNNER_PREFIX + job_id, namespace=NAMESPACE,
                                        scheduling_strategy=here).remote()
                break
            except ValueError:
                time.sleep(0.1)
        if runner is None:
            runner = Runner.options(namespace=NAMESPACE, scheduling_strategy=here).remote()
        ref = runner.run.remote(spec, store_root, job_id, self.scheduler_handle, tuple(placement))
        with self._lock:
            self._runs[job_id] = (runner, ref)

    def poll(self, job_id: str) -> RunOutcome | None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return None
        ready, _ = ray.wait([run[1]], timeout=0)
        if not ready:
            return None
        with self._lock:
            self._runs.pop(job_id, None)
        try:
            return ray.get(run[1])
        except Exception as e:  # noqa: BLE001 - the runner died (crash, OOM, killed)
            first = str(e).splitlines()[0] if str(e) else ""
            return RunOutcome.failed(f"runner died: {type(e).__name__}: {first}")

    def preempt(self, job_id: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run[0].preempt.remote()

    def kill(self, job_id: str) -> bool:
        with self._lock:
            run = self._runs.pop(job_id, None)
        if run is not None:
            ray.kill(run[0], no_restart=True)
        return run is not None

    def kill_leftover(self, job_id: str) -> None:
        try:
            ray.kill(ray.get_actor(RUNNER_PREFIX + job_id, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # no leaked runner

    def release(self, placement_groups: list[str]) -> None:
        remove_placement_groups(placement_groups)

    def sweep(self) -> int:
        """Remove the placement groups of runs stopped before their workers reported them (see
        :func:`~lorafarm.scheduler.runner.orphaned_placement_groups`), at most every few seconds;
        how many were removed."""
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        return remove_placement_groups(orphaned_placement_groups(self._job_id))
