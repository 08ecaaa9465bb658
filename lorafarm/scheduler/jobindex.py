"""Which jobs are queued and running, and how many are in each state, kept as records move.

A store of a long-lived service holds tens of thousands of records, almost all of them ended
or waiting; a scheduler tick must cost what it admits, not what it holds. The core calls
:meth:`JobIndex.moved` after every state change of a record (and when a queued job's request
changes), so the tick reads the running jobs, the queue (a
:class:`~lorafarm.policy.queue.QueueIndex`, in the policy's order) and the per-tenant counts
from here instead of scanning every record. :meth:`JobIndex.problems` compares it with a full
scan (the tests call it after every tick).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..policy import JobRequest, RunningJob
from ..policy.queue import QueueIndex
from ..spec import TenantsConfig
from .state import JobRecord, JobState


class JobIndex:
    def __init__(self, tenants: TenantsConfig):
        self.queue = QueueIndex(tenants)
        self.running: dict[str, JobRecord] = {}  # job id -> record, while RUNNING
        self.counts: Counter[tuple[str, str]] = Counter()  # (tenant, state value) -> jobs
        self._state: dict[str, tuple[str, JobState]] = {}  # job id -> (tenant, state) as last indexed
        self._views: dict[str, tuple[tuple, RunningJob]] = {}  # job id -> (what it was built from, view)

    def moved(self, record: JobRecord, request: JobRequest | None = None, now: float | None = None) -> None:
        """``record`` was added or changed state; ``request`` is its policy view when QUEUED."""
        job_id, state = record.job_id, record.state
        old = self._state.get(job_id)
        if old is not None:
            self.counts[(old[0], old[1].value)] -= 1
        self.counts[(record.tenant, state.value)] += 1
        self._state[job_id] = (record.tenant, state)
        if state is JobState.RUNNING:
            self.running[job_id] = record
        else:
            self.running.pop(job_id, None)
            self._views.pop(job_id, None)
        if state is JobState.QUEUED:
            if request is None:
                raise ValueError(f"job {job_id} is queued: its request is needed")
            self.queue.put(request, now)
        else:
            self.queue.remove(job_id)

    def running_jobs(self, now: float) -> list[RunningJob]:
        """The running jobs as the policy sees them, each rebuilt only when its size, start or
        nodes changed (a tick asks several times; hundreds of runs are common)."""
        out = []
        for job_id, record in self.running.items():
            basis = (record.workers, record.run_workers, record.started_at, record.priority,
                     tuple(map(tuple, record.placement)))
            hit = self._views.get(job_id)
            if hit is None or hit[0] != basis or record.started_at is None:
                hit = self._views[job_id] = (basis, record.running(now))
            out.append(hit[1])
        return out

    def queued_ids(self) -> list[str]:
        return [j.job_id for j in self.queue.jobs()]

    def queued_by_tenant(self) -> Counter[str]:
        return Counter({t: n for (t, s), n in self.counts.items() if s == JobState.QUEUED.value and n})

    def problems(self, records: Iterable[JobRecord]) -> list[str]:
        """Where the index differs from a scan of ``records`` (empty when it is true)."""
        records = list(records)
        out = []
        queued, indexed = {r.job_id for r in records if r.state is JobState.QUEUED}, set(self.queued_ids())
        if queued != indexed:
            out.append(f"queue: {sorted(queued ^ indexed)} differ")
        running = {r.job_id for r in records if r.state is JobState.RUNNING}
        if running != set(self.running):
            out.append(f"running: {sorted(running ^ set(self.running))} differ")
        counts = Counter((r.tenant, r.state.value) for r in records)
        if +counts != +self.counts:
            out.append(f"counts: {dict(+counts)} != {dict(+self.counts)}")
        return out
