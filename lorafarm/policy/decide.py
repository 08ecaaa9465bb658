"""Which queued jobs start now: the one admission rule the scheduler and the simulator share.

Order of service, for every call:

1. **Priority band**, aged: a job's value is its class value plus ``aging_per_hour`` points for
   every *whole* hour it has waited, rounded down to a class value (its *band*): a job is
   promoted to the next class once its points reach that class. Between promotions, jobs of
   one band are equal, so that fair share (not how long they have waited) decides.
2. **Lifted jobs** of the band first (the tail bound, :class:`Lift`): a job that has waited
   ``min(cap, floor + k × its estimated duration)`` is lifted, and lifted jobs go ahead of every
   unlifted one, in the order they were lifted (earliest deadline first) whichever their
   tenant, so the oldest soon becomes the head and gets the reservation. Waiting is bounded
   relative to a job's own size: short jobs are not left behind a stream of shorter ones, long
   ones at most ``cap``.
3. **Weighted fair share** between tenants of equal band: the tenant with the smallest dominant
   share (max of CPU and GPU fraction it holds, divided by its weight) goes first, recomputed
   after every start (weighted DRF).
4. Within a tenant and band, **shortest estimated duration** first when the caller knows
   ``estimated_duration`` (unknown = last), except in the top band, which is served in
   submission order so that nothing starves there; then **submission time**, then job id,
   so every decision is deterministic.

A job starts only as a whole gang and only within its tenant's quota. The first job that would
be next but does not fit (the *head*) gets a reservation: everything it could use is withheld,
and later jobs may backfill into what is left, so they can never delay it. With estimates
(EASY backfill), the head's *shadow time* is when it is expected to fit, running jobs giving
their resources back at their estimated ends; a later job whose estimated run, stretched by
``SHADOW_MARGIN``, ends by then may also use the reserved resources, as they are free again
before the head needs them. A running job without an estimate never gives back, so without
estimates nothing uses the reservation. Aging makes
every job the head eventually, and the head starts as soon as enough is free: nothing starves.
With ``policy.preemption`` on, a blocked head may stop running jobs of strictly lower class
(lowest class first, newest first, as few as needed).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..spec.tenants import TenantsConfig
from .admit import check_admissible
from .bands import HOUR, Bands
from .packing import form_packs
from .pool import EPS, Pool
from .quota import Usage, usage_by_tenant, within_quota
from .types import ClusterState, Decision, JobRequest, Placement, RunningJob

SHADOW_SCAN = 256  # queued jobs examined for the head's reservation once nothing else fits
SHADOW_MARGIN = 1.25  # a backfilled job must end by the shadow even if it runs this much longer than estimated


@dataclass(frozen=True, slots=True)
class Lift:
    """When a waiting job is *lifted*: ahead of every unlifted job of its band, earliest lift
    time first across tenants (so it soon becomes the head and gets the reservation). A job is
    lifted once it has waited ``floor_s + k × its estimated duration``, capped at ``cap_s`` (and
    at ``cap_s`` when its duration is unknown). Tuned on ``bench/sim_bench.py`` (20k jobs,
    1,000 GPUs, estimator mode; swept k 0.25–2, floor 1–4 h, cap 5–8 h on seed 1, checked on
    seeds 2 and 3): a short floor lifts small jobs that fell behind early, a larger k lets long
    jobs wait in proportion to their size, and the cap bounds the longest wait (a higher cap
    takes max wait past 1.5× FIFO's)."""

    k: float = 1.5
    floor_s: float = 1.0 * HOUR
    cap_s: float = 7.0 * HOUR


LIFT = Lift()


def lift_after(estimate: float | None, lift: Lift = LIFT) -> float:
    """Seconds of waiting after which a job of ``estimate`` seconds is lifted."""
    if estimate is None:
        return lift.cap_s
    return min(lift.cap_s, lift.floor_s + lift.k * estimate)


@dataclass(slots=True)
class _TenantQueue:
    name: str
    # a heap, best first: (-band, tier (0 = lifted), estimate or submitted, submitted, job id, index, job)
    jobs: list[tuple[float, int, float, float, str, int, JobRequest]] = field(default_factory=list)
    weight: float = 1.0


def ranks(jobs: Sequence[JobRequest | RunningJob], tenants: TenantsConfig, now: float) -> list[float]:
    """:func:`rank` of every job in ``jobs``, in one pass (``decide`` ranks the whole queue on
    every call, so the look-ups are made once, not per job)."""
    bands = Bands(tenants)
    return [bands.value(j, now) for j in jobs]


def rank(job: JobRequest | RunningJob, tenants: TenantsConfig, now: float) -> float:
    """The job's aged priority: class value plus aging points per whole hour waited (``decide``
    rounds it down to a class value, the job's band)."""
    return ranks((job,), tenants, now)[0]


def dominant_share(usage: Usage | None, cluster: ClusterState, weight: float) -> float:
    """Weighted DRF share: the larger of the CPU and GPU fractions held, over the weight."""
    if usage is None:
        return 0.0
    cpu = usage.cpus / cluster.total_cpus if cluster.total_cpus > 0 else 0.0
    gpu = usage.gpus / cluster.total_gpus if cluster.total_gpus > 0 else 0.0
    return max(cpu, gpu) / weight


def queue_key(job: JobRequest, band: float, top: float, now: float, lift: Lift = LIFT) -> tuple[float, int, float, float, str]:
    """Where ``job`` stands in its tenant's queue at ``now`` (smaller first): ``(-band, tier,
    order, submitted, job id)`` with tier 0 for lifted jobs (ordered by their lift time) and 1
    for the rest (ordered by estimate; the top band and unknown estimates by submission)."""
    est = job.estimated_duration
    after = lift_after(est, lift)
    if now - job.submitted_at >= after:  # lifted: earliest lift time first (its deadline)
        return (-band, 0, job.submitted_at + after, job.submitted_at, job.job_id)
    if est is None or band == top:
        est = math.inf  # the top band is served in submission order, so nothing starves there
    return (-band, 1, est, job.submitted_at, job.job_id)


def job_shape(job: JobRequest) -> tuple:
    """What decides whether a gang can fit somewhere (``decide`` tries each shape once)."""
    return (job.workers, job.cpus_per_worker, job.gpus_per_worker, job.spread, job.accelerator_type)


def decide(
    queued: Sequence[JobRequest],
    running: Sequence[RunningJob],
    cluster: ClusterState,
    tenants: TenantsConfig,
    now: float,
) -> Decision:
    """The jobs to start now (in order), and whom to preempt for a blocked head, if allowed.
    Ranks the whole queue (O(n)); :class:`~lorafarm.policy.queue.QueueIndex` keeps the same
    order between calls and makes the same decision in O(tenants + jobs considered)."""
    # rank every queued job (the one O(n) pass) into its tenant's list, then sort each list
    bands = Bands(tenants)
    top = bands.top
    band_of: dict[float, float] = {level: level for level in bands.levels}  # rank -> band, filled as ranks appear
    queues: dict[str, _TenantQueue] = {}
    shapes: set[tuple] = set()
    packable: dict[str, list[JobRequest]] = {}
    for job in queued:
        if job.pack_key is not None:
            packable.setdefault(job.pack_key, []).append(job)
        value = bands.value(job, now)
        band = band_of.get(value)
        if band is None:  # aged between two classes: its band is the class below
            band = band_of[value] = bands.band(value)
        q = queues.get(job.tenant)
        if q is None:
            q = queues[job.tenant] = _TenantQueue(job.tenant)
        q.jobs.append((*queue_key(job, band, top, now), len(q.jobs), job))
        shapes.add(job_shape(job))
    for q in queues.values():
        heapq.heapify(q.jobs)  # best first; popped lazily, as few as the call needs
    decision = serve(queues, shapes, running, cluster, tenants, now=now)
    if not packable:
        return decision
    by_id = {j.job_id: j for j in queued}
    for ms in packable.values():
        ms.sort(key=lambda j: (j.submitted_at, j.job_id))
    return form_packs(decision, by_id.get, packable, running, tenants, now)


def serve(
    queues: dict[str, _TenantQueue],
    shapes: Collection[tuple],
    running: Sequence[RunningJob],
    cluster: ClusterState,
    tenants: TenantsConfig,
    popped: list | None = None,
    clean=None,
    *,
    now: float,
) -> Decision:
    """The order of service over per-tenant heaps (best first): weighted DRF between tenants of
    a band, whole gangs within quota, a reservation for the head, backfill behind it. Pops only
    the jobs it considers (appended to ``popped`` when given); ``clean(q)`` drops stale heads."""
    usage = usage_by_tenant(running)
    min_cpus = min((s[0] * s[1] for s in shapes), default=math.inf)  # the smallest gang of each resource
    min_gpus = min((s[0] * s[2] for s in shapes), default=math.inf)
    n_shapes = len(shapes)
    for q in queues.values():
        q.weight = tenants.weight(q.name)

    def key(q: _TenantQueue) -> tuple:
        neg_band, tier, order, submitted, job_id, _, _ = q.jobs[0]
        if tier == 0:  # lifted: earliest lift time first, whichever tenant
            return (neg_band, 0, order, submitted, job_id, q.name)
        return (neg_band, 1, dominant_share(usage.get(q.name), cluster, q.weight), submitted, job_id, q.name)

    heap = []
    for q in queues.values():
        if clean is not None:
            clean(q)
        if q.jobs:
            heap.append((key(q), q.name))
    heapq.heapify(heap)

    pool = Pool(cluster)
    free = Pool(cluster)  # what is really free: the head's reservation included (shadow backfill)
    started: list[tuple[float, JobRequest, Placement]] = []
    start: list[str] = []
    placements: dict[str, Placement] = {}
    never_fits: dict[str, str] = {}
    head: JobRequest | None = None
    shadow = -math.inf  # when the head is expected to fit: jobs ending before may use its reservation
    considered = 0
    extra = 0
    while heap:
        if free.cpus <= EPS and free.gpus <= EPS and (head is not None or not tenants.policy.preemption):
            break  # nothing left to give (every worker needs some CPU or GPU); with preemption on, find the head
        if head is not None and (pool.gpus + EPS < min_gpus or pool.cpus + EPS < min_cpus
                                 or len(pool.failed) >= n_shapes):
            if shadow <= now or shadow == math.inf or extra >= SHADOW_SCAN:
                break  # after the head's reservation no queued job can fit any more: done
            extra += 1
        _, name = heapq.heappop(heap)
        q = queues[name]
        entry = heapq.heappop(q.jobs)
        if popped is not None:
            popped.append(entry)
        job = entry[6]
        considered += 1
        u = usage.get(name)
        if u is None:
            u = usage[name] = Usage()
        if within_quota(job, u, tenants):
            placement = pool.place_job(job)
            short = False
            if placement is None and head is not None and job.estimated_duration is not None \
                    and now + SHADOW_MARGIN * job.estimated_duration <= shadow < math.inf:
                placement = free.place_job(job)  # it ends before the head can start: its reservation is free till then
                short = True
            if placement is not None:
                free.take(job.workers, job.cpus_per_worker, job.gpus_per_worker, placement)
                if short:
                    pool.clip(free)
                else:
                    pool.take(job.workers, job.cpus_per_worker, job.gpus_per_worker, placement)
                started.append((math.inf if job.estimated_duration is None else now + job.estimated_duration,
                                job, placement))
                u.add(job)
                start.append(job.job_id)
                if placement:
                    placements[job.job_id] = placement
            elif head is None:
                reason = check_admissible(job, tenants, cluster)
                if reason:
                    never_fits[job.job_id] = reason
                else:
                    head = job
                    if not tenants.policy.backfill:
                        break
                    pool.reserve(job.workers, job.cpus_per_worker, job.gpus_per_worker, job.accelerator_type)
                    shadow = shadow_time(job, running, started, free, now)
        if clean is not None:
            clean(q)
        if q.jobs:
            heapq.heappush(heap, (key(q), name))

    preempt: tuple[str, ...] = ()
    if head is not None and tenants.policy.preemption:
        preempt = choose_victims(head, running, cluster, tenants)
    return Decision(
        start=tuple(start), placements=placements, preempt=preempt,
        preempt_for=head.job_id if preempt else None, reserved_for=head.job_id if head else None,
        never_fits=never_fits, considered=considered,
    )


def shadow_time(head: JobRequest, running: Sequence[RunningJob],
                started: Sequence[tuple[float, JobRequest, Placement]], free: Pool, now: float) -> float:
    """When ``head`` is expected to fit: running jobs (and those just started) give their
    resources back at their estimated ends, earliest first (a job without an estimate never
    does); inf when the head does not fit even then. A job that ends before then may run in
    the head's reservation (EASY backfill)."""
    ends = [(max(now, r.started_at + r.estimated_duration), r.workers, r.cpus_per_worker, r.gpus_per_worker, r.placement)
            for r in running if r.estimated_duration is not None]
    ends += [(end, j.workers, j.cpus_per_worker, j.gpus_per_worker, p) for end, j, p in started]
    ends.sort(key=lambda e: e[0])
    trial = free.copy()
    for end, workers, cpus, gpus, placement in ends:
        if end == math.inf:
            break
        trial.take(workers, cpus, gpus, placement, sign=-1.0)
        if trial.place_job(head) is not None:
            return end
    return math.inf


def choose_victims(
    head: JobRequest, running: Sequence[RunningJob], cluster: ClusterState, tenants: TenantsConfig
) -> tuple[str, ...]:
    """The fewest running jobs of strictly lower class (lowest class, then newest, first) whose
    resources, added to what is free, let ``head`` start; () when no such set exists. A job is
    never chosen when stopping it would take its tenant below its ``guaranteed`` resources. A
    co-trained pack frees its gang only when all its members stop: it is chosen whole (every
    member of lower class) or not at all."""
    head_value = tenants.priority_value(head.priority)
    units = [u for u in _units(running) if all(tenants.priority_value(j.priority) < head_value for j in u)]
    units.sort(key=lambda u: (max(tenants.priority_value(j.priority) for j in u), -max(j.started_at for j in u),
                              u[0].job_id))
    usage = usage_by_tenant(running)
    pool = Pool(cluster)
    chosen: list[tuple[RunningJob, ...]] = []
    for unit in units:
        trial = {t: Usage(u.workers, u.cpus, u.gpus) for t, u in usage.items()}
        keeps = True
        for victim in unit:
            keeps = keeps and _keeps_guarantee(trial[victim.tenant], victim, tenants.guaranteed(victim.tenant))
            trial[victim.tenant].add(victim, sign=-1)
        if not keeps:
            continue
        usage = trial
        for victim in unit:
            pool.take(victim.workers, victim.cpus_per_worker, victim.gpus_per_worker, victim.placement, sign=-1.0)
        chosen.append(unit)
        if pool.place(head.workers, head.cpus_per_worker, head.gpus_per_worker) is not None:
            return tuple(j.job_id for u in _drop_unneeded(head, cluster, chosen) for j in u)
    return ()


def _units(running: Sequence[RunningJob]) -> list[tuple[RunningJob, ...]]:
    """Running jobs as what stopping frees: a job alone, or every member of a pack together."""
    packs: dict[str, list[RunningJob]] = {}
    out: list[tuple[RunningJob, ...]] = []
    for j in running:
        if j.pack is None:
            out.append((j,))
        else:
            packs.setdefault(j.pack, []).append(j)
    return out + [tuple(ms) for ms in packs.values()]


def _keeps_guarantee(u: Usage, victim: RunningJob, g) -> bool:
    """Whether the tenant still holds its guaranteed resources after ``victim`` stops."""
    return ((g.workers is None or u.workers - victim.workers * victim.share >= g.workers - EPS)
            and (g.cpus is None or u.cpus - victim.cpus >= g.cpus - EPS)
            and (g.gpus is None or u.gpus - victim.gpus >= g.gpus - EPS))


def _drop_unneeded(head: JobRequest, cluster: ClusterState,
                   chosen: list[tuple[RunningJob, ...]]) -> list[tuple[RunningJob, ...]]:
    """Spare any chosen victim (oldest choices first) whose resources turn out not to be needed."""
    keep = list(chosen)
    for unit in list(chosen):
        trial = [u for u in keep if u is not unit]
        pool = Pool(cluster)
        for u in trial:
            for j in u:
                pool.take(j.workers, j.cpus_per_worker, j.gpus_per_worker, j.placement, sign=-1.0)
        if pool.place(head.workers, head.cpus_per_worker, head.gpus_per_worker) is not None:
            keep = trial
    return keep
