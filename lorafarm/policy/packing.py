"""Co-training packs: which queued jobs train in the gang of a job that starts now.

Applied to a :class:`~lorafarm.policy.types.Decision` after the order of service has chosen who
starts (so packing never changes who goes first): a starting job whose tenant has
``co_training: true`` and whose ``pack_key`` is set (its spec allows co-training; equal keys
mean one pack can train them, :func:`lorafarm.cotrain.compat.pack_key`) takes queued jobs of
the same key and gang shape from co-training tenants into its gang, up to
``policy.co_training_max_members``. Jobs that were about to start themselves come first (their
own gangs then stay free), then the others by band and submission time.

Each member holds ``1/K`` of the gang (K members): it counts against its tenant's quota by that
share, and a job joins only while every member tenant stays within its quota at the new K.
Pure and deterministic, like the rest of the policy: the scheduler and the simulator apply the
same function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from ..spec.tenants import TenantsConfig
from .bands import Bands
from .quota import Usage, usage_by_tenant
from .types import Decision, JobRequest, RunningJob

PACK_SCAN = 256  # queued jobs of one key examined per starting job (in submission order)


def gang_shape(job: JobRequest) -> tuple:
    """What must be equal for two jobs to share one gang."""
    return (job.workers, job.cpus_per_worker, job.gpus_per_worker, job.spread, job.accelerator_type)


def form_packs(decision: Decision, get: Callable[[str], JobRequest | None],
               packable: Mapping[str, Iterable[JobRequest]], running: Sequence[RunningJob],
               tenants: TenantsConfig, now: float) -> Decision:
    """``decision`` with packs: ``packs[leader] = (members...)``; members that were in ``start``
    leave it (they train in the leader's gang). ``packable``: queued jobs by pack key, in
    submission order (started ones included); ``get``: a queued job by id."""
    cap = tenants.policy.co_training_max_members
    if cap < 2 or not packable or not decision.start:
        return decision
    starting = {job_id: i for i, job_id in enumerate(decision.start)}
    leaders = [j for j in (get(job_id) for job_id in decision.start)
               if j is not None and j.pack_key is not None and j.pack_key in packable
               and tenants.co_training(j.tenant)]
    if not leaders:
        return decision
    usage = usage_by_tenant(running)
    for job_id in decision.start:  # what the decision's starts will hold, at full size
        job = get(job_id)
        if job is not None:
            usage.setdefault(job.tenant, Usage()).add(job)
    bands = Bands(tenants)
    packs: dict[str, tuple[str, ...]] = {}
    taken: set[str] = set()
    for lead in leaders:
        if lead.job_id in taken:
            continue
        shape = gang_shape(lead)
        candidates = []
        for job in packable[lead.pack_key]:
            if len(candidates) >= PACK_SCAN:
                break
            if job.job_id != lead.job_id and job.job_id not in taken and job.job_id not in packs \
                    and job.job_id not in decision.never_fits and gang_shape(job) == shape \
                    and tenants.co_training(job.tenant):
                candidates.append(job)
        if not candidates:
            continue
        candidates.sort(key=lambda j: (j.job_id not in starting, starting.get(j.job_id, 0),
                                       -bands.band(bands.value(j, now)), j.submitted_at, j.job_id))
        members = [lead]
        for job in candidates:
            if len(members) >= cap:
                break
            if _within_quotas([*members, job], usage, starting, tenants):
                members.append(job)
        if len(members) < 2:
            continue
        for m in members:  # charge each member its share from now on
            if m.job_id in starting:
                usage[m.tenant].add(m, sign=-1)
            usage.setdefault(m.tenant, Usage()).add(_share_of(lead, len(members), m))
        packs[lead.job_id] = tuple(m.job_id for m in members[1:])
        taken.update(m.job_id for m in members)
    if not packs:
        return decision
    members = {m for ms in packs.values() for m in ms}
    return replace(decision, start=tuple(j for j in decision.start if j not in members), packs=packs)


def _within_quotas(members: list[JobRequest], usage: Mapping[str, Usage], starting: Mapping[str, int],
                   tenants: TenantsConfig) -> bool:
    """Whether every member tenant stays within its quota when ``members`` share the first's gang."""
    lead, k = members[0], len(members)
    count: dict[str, int] = {}
    full: dict[str, list[JobRequest]] = {}
    for m in members:
        count[m.tenant] = count.get(m.tenant, 0) + 1
        if m.job_id in starting:  # charged at full size in ``usage`` so far
            full.setdefault(m.tenant, []).append(m)
    for tenant, n in count.items():
        u = Usage()
        held = usage.get(tenant)
        if held is not None:
            u.add(held)
        for m in full.get(tenant, ()):
            u.add(m, sign=-1)
        if u.over(tenants.quota(tenant), lead.workers * n / k, lead.cpus * n / k, lead.gpus * n / k):
            return False
    return True


def _share_of(lead: JobRequest, k: int, member: JobRequest) -> RunningJob:
    """What ``member`` holds in a pack of ``k`` on ``lead``'s gang (for usage counting)."""
    return member_view(lead, k, member.job_id, member.tenant, member.priority, member.submitted_at, 0.0,
                       pack=lead.job_id)


def member_view(lead: JobRequest | RunningJob, k: int, job_id: str, tenant: str, priority: str,
                submitted_at: float, started_at: float, pack: str, **extra) -> RunningJob:
    """A pack member as the policy sees it: the gang's workers, ``1/k`` of each one's CPUs and GPUs."""
    return RunningJob(job_id=job_id, tenant=tenant, workers=lead.workers, cpus_per_worker=lead.cpus_per_worker / k,
                      gpus_per_worker=lead.gpus_per_worker / k, priority=priority, submitted_at=submitted_at,
                      started_at=started_at, pack=pack, share=1.0 / k, **extra)
