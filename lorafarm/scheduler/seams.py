"""What :class:`~lorafarm.scheduler.core.SchedulerCore` is handed instead of reaching for Ray or
the system clock: a clock, a launcher for runners and a view of the cluster's capacity. The Ray
ones are :class:`~lorafarm.scheduler.launcher.RayLauncher` and
:class:`~lorafarm.scheduler.capacity.RayCapacity`; unit tests pass fakes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from ..events import RunOutcome
from ..policy import ClusterState, RunningJob
from ..spec import JobSpec


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class Launcher(Protocol):
    """Starts one runner per running job and tells how it ended."""

    def start(self, job_id: str, spec: JobSpec, store_root: str, placement=()) -> None:
        """Start the job's runner; it reports events to the scheduler as it trains. ``placement``
        ((node id, workers), ...), given only on a per-node cluster, is where its workers must run."""
        ...

    def start_pack(self, pack_id: str, members: list[tuple[str, JobSpec]], store_root: str, placement=()) -> None:
        """Start one runner training ``members`` ((job id, spec), ...) as a co-trained pack on one
        gang; from then on each member is polled, preempted and killed by its own job id (a
        member killed or preempted leaves the pack; the others go on)."""
        ...

    def poll(self, job_id: str) -> RunOutcome | None:
        """How the run ended, or None while it runs. A runner that died is
        ``RunOutcome.failed("runner died: ...")``."""
        ...

    def preempt(self, job_id: str) -> None:
        """Ask the run to checkpoint and stop (it then ends PREEMPTED)."""
        ...

    def kill(self, job_id: str) -> bool:
        """Stop the run now; whether there was one."""
        ...

    def kill_leftover(self, job_id: str) -> None:
        """Stop a runner a previous scheduler left behind (recovery)."""
        ...

    def release(self, placement_groups: list[str]) -> None:
        """Free the resources of a stopped run's worker groups (placement group hex ids)."""
        ...

    def sweep(self) -> int:
        """Free worker groups that stopped runs left without reporting them; how many."""
        ...


class Capacity(Protocol):
    def cluster(self, running: Sequence[RunningJob]) -> ClusterState:
        """The cluster's totals (what could ever fit) and what ``running`` leaves free."""
        ...


def cluster_state(total_cpus: float, total_gpus: float, running: Sequence[RunningJob]) -> ClusterState:
    """Totals, and free = totals minus what the running jobs hold."""
    return ClusterState(total_cpus=total_cpus, total_gpus=total_gpus,
                        free_cpus=total_cpus - sum(j.cpus for j in running),
                        free_gpus=total_gpus - sum(j.gpus for j in running))
