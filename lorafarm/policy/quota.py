"""What a tenant holds, and the one quota check every scheduler path uses.

``decide``, the FIFO/SJF baselines, :func:`~lorafarm.policy.admit.check_admissible` (a job
alone, against its quota) and the simulator (is a start within quota, is a queued job runnable)
all ask :meth:`Usage.over`, so a quota means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .pool import EPS
from .types import JobRequest, RunningJob

if TYPE_CHECKING:
    from ..spec.tenants import Quota, TenantsConfig


class Gang(Protocol):
    """Anything that holds a gang: a queued or running job, or the scheduler's job record."""

    @property
    def workers(self) -> int: ...
    @property
    def cpus(self) -> float: ...
    @property
    def gpus(self) -> float: ...


@dataclass(slots=True)
class Usage:
    """Resources one tenant holds (ints until a float is added, as ``sum`` would give)."""

    workers: int = 0
    cpus: float = 0
    gpus: float = 0

    def add(self, job: Gang, sign: int = 1) -> None:
        """Count ``job``'s gang in (``sign=-1``: out); a pack member's workers by its share."""
        share = getattr(job, "share", 1.0)
        self.workers += sign * (job.workers if share == 1.0 else job.workers * share)
        self.cpus += sign * job.cpus
        self.gpus += sign * job.gpus

    def over(self, quota: Quota, workers: int = 0, cpus: float = 0.0, gpus: float = 0.0) -> list[str]:
        """The quota fields (``workers``, ``gpus``, ``cpus``) that this usage plus (workers, cpus,
        gpus) would exceed; empty when within quota."""
        return [name for name, total, limit in (("workers", self.workers + workers, quota.workers),
                                                ("gpus", self.gpus + gpus, quota.gpus),
                                                ("cpus", self.cpus + cpus, quota.cpus))
                if limit is not None and total > limit + EPS]


def within_quota(job: JobRequest | RunningJob, usage: Usage, tenants: TenantsConfig) -> bool:
    """Whether ``job`` may start while its tenant holds ``usage``."""
    return not usage.over(tenants.quota(job.tenant), job.workers, job.cpus, job.gpus)


def usage_by_tenant(running: Sequence[RunningJob]) -> dict[str, Usage]:
    """What each tenant holds now, from its running jobs."""
    usage: dict[str, Usage] = {}
    for job in running:
        usage.setdefault(job.tenant, Usage()).add(job)
    return usage
