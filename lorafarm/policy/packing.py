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

A job that still waits may also join a **running** pack of its key with room
(``Decision.regroup``): once the pack has run ``policy.co_training_join_after_s`` (and, when its
members' estimates say so, has at least that long left), its members checkpoint at the next
step boundary and the pack starts again with the newcomers; each member resumes from its own
checkpoint exactly as it would alone.
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
    if cap < 2 or not packable:
        return decision
    starting = {job_id: i for i, job_id in enumerate(decision.start)}
    leaders = [j for j in (get(job_id) for job_id in decision.start)
               if j is not None and j.pack_key is not None and j.pack_key in packable
               and tenants.co_training(j.tenant)]
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
    taken.update(starting)
    regroup = _regroups(decision, taken, packable, running, usage, tenants, now)
    if not packs and not regroup:
        return decision
    members = {m for ms in packs.values() for m in ms}
    return replace(decision, start=tuple(j for j in decision.start if j not in members), packs=packs,
                   regroup=regroup)


def _regroups(decision: Decision, taken: set[str], packable: Mapping[str, Iterable[JobRequest]],
              running: Sequence[RunningJob], usage: Mapping[str, Usage], tenants: TenantsConfig,
              now: float) -> dict[str, tuple[str, ...]]:
    """Running packs with room -> the waiting jobs (not starting now) that may join them."""
    cap, after = tenants.policy.co_training_max_members, tenants.policy.co_training_join_after_s
    by_pack: dict[str, list[RunningJob]] = {}
    for r in running:
        if r.pack is not None and r.pack_key is not None and r.pack_key in packable:
            by_pack.setdefault(r.pack, []).append(r)
    out: dict[str, tuple[str, ...]] = {}
    for pack in sorted(by_pack):
        members = by_pack[pack]
        first = members[0]
        if len(members) >= cap or now - min(m.started_at for m in members) < after \
                or not all(tenants.co_training(m.tenant) for m in members):
            continue
        left = [m.started_at + m.estimated_duration - now for m in members if m.estimated_duration is not None]
        if len(left) == len(members) and 0 < max(left) < after:
            continue  # it ends soon (by every estimate; one past its estimate says nothing): not worth a restart
        gang = (first.workers, first.cpus_per_worker / first.share, first.gpus_per_worker / first.share,
                first.accelerator_type)
        joiners: list[JobRequest] = []
        scanned = 0
        for job in packable[first.pack_key]:
            if len(members) + len(joiners) >= cap or scanned >= PACK_SCAN:
                break
            scanned += 1
            if job.job_id in taken or job.job_id in decision.never_fits or not tenants.co_training(job.tenant) \
                    or (job.workers, job.accelerator_type) != (gang[0], gang[3]) \
                    or abs(job.cpus_per_worker - gang[1]) > 1e-9 or abs(job.gpus_per_worker - gang[2]) > 1e-9:
                continue
            if _regroup_within_quotas(members, [*joiners, job], gang, usage, tenants):
                joiners.append(job)
        if joiners:
            out[pack] = tuple(j.job_id for j in joiners)
            taken.update(out[pack])
    return out


def _regroup_within_quotas(members: list[RunningJob], joiners: list[JobRequest], gang: tuple,
                           usage: Mapping[str, Usage], tenants: TenantsConfig) -> bool:
    """Whether every tenant of a running pack and its joiners stays within quota at the new size."""
    k = len(members) + len(joiners)
    workers, cpus, gpus = gang[0], gang[0] * gang[1], gang[0] * gang[2]
    count: dict[str, int] = {}
    for m in (*members, *joiners):
        count[m.tenant] = count.get(m.tenant, 0) + 1
    for tenant, n in count.items():
        u = Usage()
        held = usage.get(tenant)
        if held is not None:
            u.add(held)
        for m in members:
            if m.tenant == tenant:
                u.add(m, sign=-1)  # its current share, replaced by the new one below
        if u.over(tenants.quota(tenant), workers * n / k, cpus * n / k, gpus * n / k):
            return False
    return True


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
