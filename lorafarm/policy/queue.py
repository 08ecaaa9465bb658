"""The queue kept in order between decisions, so a tick costs what it admits, not what waits.

:func:`~lorafarm.policy.decide.decide` ranks the whole queue on every call: with 10,000 queued
jobs that is most of a scheduler tick. :class:`QueueIndex` holds the same per-tenant heaps
across calls and changes only what changed: a job added or removed, or a job whose key moved
with time. A key moves only at known instants (a whole hour of waiting with aging on, the
job's lift time), so each job carries the next instant its key can change and is re-keyed then
with :func:`~lorafarm.policy.decide.queue_key`, the same function ``decide`` uses.
:meth:`QueueIndex.decide` then runs the same order of service
(:func:`~lorafarm.policy.decide.serve`) and puts back what it popped: for the same queue,
running jobs, cluster, tenants and time it returns exactly ``decide``'s decision
(``tests/test_queue_index.py`` checks that on random snapshots).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterator, Sequence

from ..spec.tenants import TenantsConfig
from .decide import HOUR, LIFT, Bands, Lift, _TenantQueue, job_shape, lift_after, queue_key, serve
from .packing import form_packs
from .types import ClusterState, Decision, JobRequest, RunningJob

MARGIN_S = 1e-3  # re-key a little early: float sums near a boundary must never be missed


class QueueIndex:
    """Queued jobs by tenant, best first, kept between calls (not thread-safe: the scheduler
    calls it under its lock)."""

    def __init__(self, tenants: TenantsConfig, lift: Lift = LIFT):
        self._lift = lift
        self._jobs: dict[str, JobRequest] = {}
        self._entry: dict[str, tuple] = {}  # job id -> its live heap entry (others are stale)
        self._queues: dict[str, _TenantQueue] = {}
        self._changes: list[tuple[float, int, str, tuple]] = []  # (when, seq, job id, entry) min-heap
        self._shapes: Counter[tuple] = Counter()
        self._live: Counter[str] = Counter()  # tenant -> its queued jobs (its heap also holds stale entries)
        self._ages: dict[str, list[tuple[float, str]]] = {}  # tenant -> (submitted, job id) min-heap, lazy
        self._packable: dict[str, dict[str, JobRequest]] = {}  # pack key -> its queued jobs (co-training)
        self._seq = 0
        self._now: float | None = None  # the time the keys were computed for
        self.set_tenants(tenants)

    # ------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> JobRequest | None:
        return self._jobs.get(job_id)

    def jobs(self) -> Iterator[JobRequest]:
        return iter(self._jobs.values())

    def oldest_submitted(self) -> dict[str, float]:
        """``tenant -> submission time of its longest-waiting queued job`` (amortised O(tenants))."""
        out = {}
        for tenant, ages in list(self._ages.items()):
            while ages and ((j := self._jobs.get(ages[0][1])) is None or j.submitted_at != ages[0][0]):
                heapq.heappop(ages)
            if ages:
                out[tenant] = ages[0][0]
            else:
                del self._ages[tenant]
        return out

    def set_tenants(self, tenants: TenantsConfig) -> None:
        """A new tenants file: classes, aging and weights may all differ, so every key is redone."""
        self.tenants = tenants
        self._bands = Bands(tenants)
        jobs = list(self._jobs.values())
        self._jobs.clear()
        self._entry.clear()
        self._queues.clear()
        self._changes.clear()
        self._shapes.clear()
        self._live.clear()
        self._ages.clear()
        self._packable.clear()
        for job in jobs:
            self.put(job)

    def put(self, job: JobRequest, now: float | None = None) -> None:
        """Add ``job``, or replace the queued job of that id (its estimate or priority changed);
        ``now``: the caller's clock (its key is computed for then, else for the last decision)."""
        if job.job_id in self._jobs:
            self.remove(job.job_id)
        self._jobs[job.job_id] = job
        if job.pack_key is not None:
            self._packable.setdefault(job.pack_key, {})[job.job_id] = job
        self._shapes[job_shape(job)] += 1
        self._live[job.tenant] += 1
        heapq.heappush(self._ages.setdefault(job.tenant, []), (job.submitted_at, job.job_id))
        if now is not None and (self._now is None or now > self._now):
            self._advance(now)
        self._key(job, self._now if self._now is not None else job.submitted_at)

    def remove(self, job_id: str) -> JobRequest | None:
        """Take the job out (it started, was cancelled or failed); a no-op for an unknown id."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        self._entry.pop(job_id, None)  # its heap entries go stale and are dropped when met
        if job.pack_key is not None:
            same = self._packable[job.pack_key]
            del same[job_id]
            if not same:
                del self._packable[job.pack_key]
        shape = job_shape(job)
        self._shapes[shape] -= 1
        if not self._shapes[shape]:
            del self._shapes[shape]
        self._live[job.tenant] -= 1
        self._maybe_compact(job.tenant)
        if len(self._changes) > 4 * len(self._jobs) + 1024:  # removed jobs' pending changes
            self._changes = [c for c in self._changes if self._entry.get(c[2]) is c[3]]
            heapq.heapify(self._changes)
        return job

    # ------------------------------------------------------------ the decision
    def decide(self, running: Sequence[RunningJob], cluster: ClusterState, now: float) -> Decision:
        """Exactly ``decide(list(self.jobs()), running, cluster, self.tenants, now)``."""
        self._advance(now)
        popped: list[tuple] = []
        queues = {name: q for name, q in self._queues.items() if q.jobs}
        try:
            decision = serve(queues, self._shapes, running, cluster, self.tenants, popped, self._clean, now=now)
        finally:
            for entry in popped:  # the queue is unchanged until the caller removes what started
                heapq.heappush(self._queues[entry[6].tenant].jobs, entry)
        if not self._packable:
            return decision
        keys = {j.pack_key for j in map(self._jobs.get, decision.start) if j is not None and j.pack_key is not None}
        keys.update(r.pack_key for r in running if r.pack_key is not None)  # running packs new jobs may join
        packable = {k: sorted(self._packable[k].values(), key=lambda j: (j.submitted_at, j.job_id))
                    for k in keys if k in self._packable}
        return form_packs(decision, self._jobs.get, packable, running, self.tenants, now)

    def keys(self, now: float) -> dict[str, tuple]:
        """``job id -> (-band, tier, order, submitted, job id)`` at ``now``: where each job stands
        in its tenant's queue (what :meth:`decide` orders by)."""
        self._advance(now)
        return {job_id: entry[:5] for job_id, entry in self._entry.items()}

    # ------------------------------------------------------------ keys over time
    def _key(self, job: JobRequest, now: float) -> None:
        """(Re)compute the job's key as ``decide`` would at ``now``; schedule its next change."""
        band = self._bands.band(self._bands.value(job, now))
        self._seq += 1
        entry = (*queue_key(job, band, self._bands.top, now, self._lift), self._seq, job)
        self._entry[job.job_id] = entry
        q = self._queues.get(job.tenant)
        if q is None:
            q = self._queues[job.tenant] = _TenantQueue(job.tenant)
        heapq.heappush(q.jobs, entry)
        when = self._next_change(job, band, entry[1] == 0, now)
        if when is not None:
            heapq.heappush(self._changes, (when, self._seq, job.job_id, entry))

    def _next_change(self, job: JobRequest, band: float, lifted: bool, now: float) -> float | None:
        """The earliest instant after ``now`` at which the job's key can differ, or None."""
        times = []
        if not lifted:
            times.append(job.submitted_at + lift_after(job.estimated_duration, self._lift))
        if self._bands.aging > 0 and band < self._bands.top:
            waited = now - job.submitted_at
            times.append(job.submitted_at + max(1.0, math.floor(waited / HOUR) + 1.0) * HOUR)
        return min(times) - MARGIN_S if times else None

    def _advance(self, now: float) -> None:
        """Re-key every job whose key may have changed by ``now``."""
        if self._now is not None and now < self._now:  # time went back (a replay): keys are redone
            self._now = now
            self.set_tenants(self.tenants)
            return
        self._now = now
        due = []
        while self._changes and self._changes[0][0] <= now:
            _, _, job_id, entry = heapq.heappop(self._changes)
            if self._entry.get(job_id) is entry:
                due.append(job_id)
        for job_id in due:  # (within the margin of a change the new key may equal the old: due again next call)
            self._key(self._jobs[job_id], now)
        for name in {self._jobs[j].tenant for j in due}:
            self._maybe_compact(name)

    # ------------------------------------------------------------ stale entries
    def _clean(self, q: _TenantQueue) -> None:
        """Drop stale entries off the top of ``q`` (removed or re-keyed jobs)."""
        jobs, live = q.jobs, self._entry
        while jobs and live.get(jobs[0][4]) is not jobs[0]:
            heapq.heappop(jobs)

    def _maybe_compact(self, tenant: str) -> None:
        """Rebuild a tenant's heap once stale entries outnumber live ones (amortised O(1))."""
        q = self._queues.get(tenant)
        if q is None:
            return
        live = self._live[tenant]
        if live <= 0:
            del self._queues[tenant]
            self._live.pop(tenant, None)
        elif len(q.jobs) > 2 * live + 64:
            q.jobs = [e for e in q.jobs if self._entry.get(e[4]) is e]
            heapq.heapify(q.jobs)
