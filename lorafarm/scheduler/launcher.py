"""The Ray launcher: one :class:`~lorafarm.scheduler.runner.Runner` actor per running job,
named ``RUNNER_PREFIX + job_id`` so that a restarted scheduler can find and stop leftovers,
and one :class:`~lorafarm.scheduler.pack_runner.PackRunner` per co-trained pack (``RUNNER_PREFIX
+ pack id``), which answers for each member: its outcome, its stop, its cancel."""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..events import RunOutcome
from ..spec import JobSpec
from .names import NAMESPACE, RUNNER_PREFIX
from .pack_runner import PackRunner
from .runner import Runner, orphaned_placement_groups, remove_placement_groups

SWEEP_EVERY_S = 5.0  # how often the orphaned placement groups of stopped runs are looked for


class RayLauncher:
    def __init__(self, scheduler_handle: Any):
        self.scheduler_handle = scheduler_handle  # where runners report events
        self._runs: dict[str, tuple[Any, Any]] = {}  # job id -> (runner actor, ref of its run() or its outcome)
        self._pack_of: dict[str, str] = {}  # a pack member's job id -> its pack id, while it runs
        self._packs: dict[str, tuple[Any, Any]] = {}  # pack id -> (its runner, ref of its run()), till it returns
        self._lock = threading.Lock()  # cancel (an API thread) and the admission loop both use it
        self._job_id = ray.get_runtime_context().get_job_id()  # the job every runner's actors belong to
        self._next_sweep = 0.0

    def start(self, job_id: str, spec: JobSpec, store_root: str, placement=()) -> None:
        """Start the job's runner; ``placement`` (node id, workers) pins its workers to those nodes."""
        runner = _named(Runner, RUNNER_PREFIX + job_id)
        ref = runner.run.remote(spec, store_root, job_id, self.scheduler_handle, tuple(placement))
        with self._lock:
            self._runs[job_id] = (runner, ref)

    def start_pack(self, pack_id: str, members: list[tuple[str, JobSpec]], store_root: str, placement=()) -> None:
        """Start one runner training ``members`` ((job id, spec), ...) as a co-trained pack; each
        member is then polled, preempted and killed by its own job id."""
        ids = [j for j, _ in members]
        runner = _named(PackRunner, RUNNER_PREFIX + pack_id, ids)
        ref = runner.run.remote(members, store_root, self.scheduler_handle, tuple(placement))
        with self._lock:
            self._packs[pack_id] = (runner, ref)
            for job_id in ids:
                self._runs[job_id] = (runner, runner.outcome.remote(job_id))
                self._pack_of[job_id] = pack_id

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
            self._pack_of.pop(job_id, None)
        try:
            return ray.get(run[1])
        except Exception as e:  # noqa: BLE001 - the runner died (crash, OOM, killed)
            first = str(e).splitlines()[0] if str(e) else ""
            return RunOutcome.failed(f"runner died: {type(e).__name__}: {first}")

    def preempt(self, job_id: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return
        if job_id in self._pack_of:
            run[0].stop_member.remote(job_id)
        else:
            run[0].preempt.remote()

    def kill(self, job_id: str) -> bool:
        """Stop the run now; a pack member is asked to leave its pack (the others train on),
        and the pack's runner is stopped with its last member."""
        with self._lock:
            run = self._runs.pop(job_id, None)
            pack = self._pack_of.pop(job_id, None)
            last = pack is not None and pack not in self._pack_of.values()
        if run is None:
            return False
        if pack is not None and not last:
            run[0].stop_member.remote(job_id)
        else:
            ray.kill(run[0], no_restart=True)
            if pack is not None:
                with self._lock:
                    self._packs.pop(pack, None)
        return True

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
        with self._lock:
            packs = list(self._packs.items())
        for pack_id, (_, ref) in packs:  # a pack's run returned (histories written): its runner is done
            if ray.wait([ref], timeout=0)[0]:
                with self._lock:
                    self._packs.pop(pack_id, None)
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        return remove_placement_groups(orphaned_placement_groups(self._job_id))


def _named(actor_class, name: str, *args):
    """A runner actor named ``name`` on the scheduler's node: a runner (and the Ray Train
    controller it owns) must outlive the loss of any worker node, so that the scheduler can
    resize or re-queue its jobs. A runner just killed (node lost, resize) frees its name
    within moments; after 10 s it goes unnamed."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    for _ in range(100):
        try:
            return actor_class.options(name=name, namespace=NAMESPACE, scheduling_strategy=here).remote(*args)
        except ValueError:
            time.sleep(0.1)
    return actor_class.options(namespace=NAMESPACE, scheduling_strategy=here).remote(*args)
