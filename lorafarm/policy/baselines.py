"""Baselines with :func:`decide`'s signature, for ``lorafarm simulate`` to compare against.

Both keep the rules no scheduler may break (whole gangs, tenant quotas, per-node placement)
and differ from ``decide`` only in the order of service:

* :func:`fifo`: submission order. The first job that does not fit blocks every job behind
  it (no backfill), which is what a plain FIFO queue does and why large gangs never starve.
* :func:`sjf`: shortest ``estimated_duration`` first (unknown durations last), with the same
  blocking head. Needs duration estimates, which a real scheduler rarely has: it is the bar
  an oracle would reach, not a policy to run.

A job blocked only by its own tenant's quota is skipped (it could not start whatever the
cluster did), so one tenant at its quota does not stop the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..spec.tenants import TenantsConfig
from .admit import check_admissible
from .decide import decide
from .pool import Pool
from .quota import Usage, usage_by_tenant, within_quota
from .types import ClusterState, Decision, JobRequest, Placement, RunningJob

Policy = Callable[[Sequence[JobRequest], Sequence[RunningJob], ClusterState, TenantsConfig, float], Decision]


def _in_order(ordered: Sequence[JobRequest], running: Sequence[RunningJob], cluster: ClusterState,
              tenants: TenantsConfig) -> Decision:
    usage = usage_by_tenant(running)
    pool = Pool(cluster)
    start: list[str] = []
    placements: dict[str, Placement] = {}
    never_fits: dict[str, str] = {}
    blocked: str | None = None
    considered = 0
    for job in ordered:
        considered += 1
        u = usage.setdefault(job.tenant, Usage())
        if not within_quota(job, u, tenants):
            continue
        placement = pool.place(job.workers, job.cpus_per_worker, job.gpus_per_worker)
        if placement is None:
            reason = check_admissible(job, tenants, cluster)
            if reason:
                never_fits[job.job_id] = reason
                continue
            blocked = job.job_id
            break
        pool.take(job.workers, job.cpus_per_worker, job.gpus_per_worker, placement)
        u.add(job)
        start.append(job.job_id)
        if placement:
            placements[job.job_id] = placement
    return Decision(start=tuple(start), placements=placements, reserved_for=blocked, never_fits=never_fits,
                    considered=considered)


def fifo(queued: Sequence[JobRequest], running: Sequence[RunningJob], cluster: ClusterState,
         tenants: TenantsConfig, now: float) -> Decision:
    """Submission order; the first job that does not fit blocks the rest."""
    return _in_order(sorted(queued, key=lambda j: (j.submitted_at, j.job_id)), running, cluster, tenants)


def sjf(queued: Sequence[JobRequest], running: Sequence[RunningJob], cluster: ClusterState,
        tenants: TenantsConfig, now: float) -> Decision:
    """Shortest estimated duration first (unknown last); the first that does not fit blocks the rest."""
    def key(j: JobRequest) -> tuple:
        d = j.estimated_duration
        return (math.inf if d is None else d, j.submitted_at, j.job_id)

    return _in_order(sorted(queued, key=key), running, cluster, tenants)


POLICIES: dict[str, Policy] = {"lorafarm": decide, "fifo": fifo, "sjf": sjf}
"""Every policy ``lorafarm simulate --policy`` accepts, by name."""
