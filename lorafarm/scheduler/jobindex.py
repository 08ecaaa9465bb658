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
from collections.abc import Iterable, Sequence

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
        self._views: dict[str, RunningJob] = {}  # job id -> its policy view, while RUNNING
        self._running_list: tuple[RunningJob, ...] | None = None  # the views in order; None: rebuild
        self.changed_tenants: set[str] = set()  # tenants whose counts moved (the gauges take and clear it)

    def moved(self, record: JobRecord, request: JobRequest | None = None, now: float | None = None) -> None:
        """``record`` was added or changed state; ``request`` is its policy view when QUEUED."""
        job_id, state = record.job_id, record.state
        old = self._state.get(job_id)
        if old is not None:
            self.counts[(old[0], old[1].value)] -= 1
            self.changed_tenants.add(old[0])
        self.counts[(record.tenant, state.value)] += 1
        self.changed_tenants.add(record.tenant)
        self._state[job_id] = (record.tenant, state)
        self._views.pop(job_id, None)
        self._running_list = None
        if state is JobState.RUNNING:
            self.running[job_id] = record
        else:
            self.running.pop(job_id, None)
        if state is JobState.QUEUED:
            if request is None:
                raise ValueError(f"job {job_id} is queued: its request is needed")
            self.queue.put(request, now)
        else:
            self.queue.remove(job_id)

    def reshaped(self, record: JobRecord) -> None:
        """A running job's size, nodes or placement changed without a state change (a resize, a
        node loss, its workers' real nodes reported): its policy view is rebuilt."""
        self._views.pop(record.job_id, None)
        self._running_list = None

    def running_jobs(self, now: float) -> Sequence[RunningJob]:
        """The running jobs as the policy sees them (a tick asks several times; hundreds of runs
        are common): the same tuple until a job starts, ends or is :meth:`reshaped`."""
        if self._running_list is None:
            views = self._views
            for job_id, record in self.running.items():
                if job_id not in views:
                    views[job_id] = record.running(now)
            self._running_list = tuple(views[job_id] for job_id in self.running)
        return self._running_list

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
        if self._running_list is not None:  # a cached view a change bypassed (not reshaped) is stale
            by_id = {r.job_id: r for r in records}
            stale = [v.job_id for v in self._running_list if v.job_id in by_id
                     and _shape(v) != _shape(by_id[v.job_id].running(v.started_at))]
            if stale:
                out.append(f"running views: {sorted(stale)} stale")
        return out


def _shape(view: RunningJob) -> tuple:
    """What a running job's view is built from and the policy reads (not when it was taken)."""
    return (view.workers, view.cpus_per_worker, view.gpus_per_worker, view.priority, view.started_at,
            view.placement, view.accelerator_type)
