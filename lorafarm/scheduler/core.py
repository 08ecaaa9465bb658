"""The scheduler's logic: every job's state transitions and admission through the pure
``policy``, with no Ray and no system clock in it.

It is the only writer of job records. On start it recovers every job from the store before it
accepts new ones; then each :meth:`SchedulerCore.tick` reaps ended runs, fails hung ones, asks
``policy.decide`` which queued jobs start and starts them through the launcher. What it is
handed (see :mod:`.seams`): a clock, a launcher for runners and a capacity view. What runners
report is applied in :mod:`.reports`; what tenants hold and are charged in :mod:`.usage`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from ..errors import LorafarmError, SpecError
from ..events import Event, RunOutcome, RunState
from ..metrics import Metrics
from ..policy import decide, job_priority, submission_problems
from ..spec import TenantsConfig, validate_spec
from ..storage import Store, new_job_id, read_manifest
from .joblog import JobLogs
from .records import RecordStore
from .reports import LiveRun, apply_event
from .seams import Capacity, Clock, Launcher
from .state import EventKind, JobRecord, JobState, check_state
from .trust import trust_problems
from .usage import Chargeback, tenants_usage

ENDED = {RunState.SUCCEEDED: JobState.SUCCEEDED, RunState.FAILED: JobState.FAILED}


class SchedulerCore:
    """Thread-safe (one lock): the actor serves API calls on a thread pool while its loop ticks."""

    def __init__(self, store: Store, tenants: TenantsConfig, clock: Clock, launcher: Launcher, capacity: Capacity,
                 hang_timeout_s: float = 1800.0):
        self.store = store
        self.records = RecordStore(store)
        self.tenants = tenants
        self.clock = clock
        self.launcher = launcher
        self.capacity = capacity
        self.hang_timeout_s = hang_timeout_s
        self.lock = threading.RLock()
        self.jobs: dict[str, JobRecord] = {}
        self.live: dict[str, LiveRun] = {}  # job id -> its current run, while RUNNING
        self.logs = JobLogs()
        self.metrics = Metrics()
        self.chargeback = Chargeback(self.metrics, clock.now())
        self.recover()

    # ---------------------------------------------------------------- recovery
    def recover(self) -> None:
        """Load every record; jobs that were RUNNING lost their runner with the old scheduler
        (runners are owned by it): their leftover workers are removed and they go back to QUEUED,
        to resume from their latest checkpoint (or finish as SUCCEEDED if they had published)."""
        for record in self.records.load_all():
            self.jobs[record.job_id] = record
            self.logs.open(record.job_id)
            now = self.clock.now()
            if record.state is JobState.RUNNING:
                self.launcher.kill_leftover(record.job_id)
                self._release(record)
                adapter = self._published_adapter(record)
                if adapter is not None:  # it finished publishing just before the old scheduler died
                    record.adapter_uri = adapter
                    record.transition(JobState.SUCCEEDED, now, EventKind.RECOVERED,
                                      f"scheduler restarted; the adapter was already published at {adapter}")
                else:
                    step = self._checkpoint_step(record)
                    record.transition(JobState.QUEUED, now, EventKind.RECOVERED,
                                      "scheduler restarted while the job ran; re-queued, "
                                      + (f"resumes from checkpoint step {step}" if step else "starts over (no checkpoint)"))
                self.records.save(record)
            elif record.state is JobState.VALIDATING:
                record.transition(JobState.QUEUED, now, EventKind.RECOVERED, "scheduler restarted; queued")
                self.records.save(record)

    def _published_adapter(self, record: JobRecord) -> str | None:
        """The job's adapter URI when a complete adapter (manifest verified) is already in the store."""
        uri = self.store.adapter_uri(record.tenant, record.job_id)
        try:
            read_manifest(uri)
        except Exception:  # noqa: BLE001 - missing or incomplete: not published
            return None
        return uri

    def _checkpoint_step(self, record: JobRecord) -> int | None:
        from ..worker.checkpoints import latest_checkpoint

        try:
            ref = latest_checkpoint(self.store.job_uri(record.tenant, record.job_id))
        except Exception:  # noqa: BLE001 - an unreadable store only loses the hint
            return None
        return ref.step if ref else None

    # ---------------------------------------------------------------- API
    def submit(self, spec_dict: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
        spec = validate_spec(spec_dict)
        r = spec.resources
        record = JobRecord(
            job_id=job_id or new_job_id(spec.name), tenant=spec.tenant, name=spec.name,
            spec=spec.model_dump(mode="json"), priority=job_priority(self.tenants, spec.tenant, spec.priority),
            workers=r.workers, cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
            submitted_at=self.clock.now(), state=JobState.QUEUED,
        )
        problems = trust_problems(spec, self.tenants, self.store.root)
        capacity = self.capacity.cluster(()) if not problems else None  # totals: could it ever fit
        with self.lock:
            if capacity is not None:
                queued = collections.Counter(j.tenant for j in self.jobs.values() if j.state is JobState.QUEUED)
                problems = submission_problems(record.request(), self.tenants, capacity, queued)
            if problems:
                raise SpecError(problems)
            record.note(record.submitted_at, EventKind.SUBMITTED, f"submitted by tenant {spec.tenant}")
            self.jobs[record.job_id] = record
            self.logs.open(record.job_id)
            self._log(record.job_id, "queued")
            self.records.save(record)
            self.store.write_spec(spec.tenant, record.job_id, spec)
            return record.summary()

    def status(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            return self._get(job_id).summary()

    def list(self, tenant: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        if state is not None:
            check_state(state)
        with self.lock:
            return [j.summary() for j in sorted(self.jobs.values(), key=lambda j: j.submitted_at)
                    if (tenant is None or j.tenant == tenant) and (state is None or j.state.value == state.upper())]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e.model_dump(mode="json") for e in self._get(job_id).events]

    def logs_since(self, job_id: str, offset: int = 0) -> tuple[list[str], int, bool]:
        with self.lock:
            record = self._get(job_id)
            lines = self.logs.lines(job_id)
            return lines[offset:], len(lines), record.state.is_terminal()

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            record = self._get(job_id)
            if record.state.is_terminal():
                return record.summary()
            now = self.clock.now()
            record.note(now, EventKind.CANCEL_REQUESTED, "cancel requested")
            stopped = self.launcher.kill(job_id)
            self.live.pop(job_id, None)
            self._release(record)
            record.transition(JobState.CANCELLED, now, message="cancelled by request" + (
                "; workers stopped" if stopped else ""))
            self.metrics.job_ended(record.tenant, job_id, "cancelled", self._duration(record), 0)
            record.reason = "cancelled"
            self._log(job_id, "cancelled")
            self._persist(record)
            return record.summary()

    def tenants_usage(self) -> list[dict[str, Any]]:
        with self.lock:
            return tenants_usage(list(self.jobs.values()), self.tenants)

    def report(self, job_id: str, event: Event) -> None:
        """An event from a job's runner (fire-and-forget)."""
        with self.lock:
            record, run = self.jobs.get(job_id), self.live.get(job_id)
            if record is None or run is None or record.state is not JobState.RUNNING:
                return
            now = self.clock.now()
            run.last_progress = now
            if apply_event(event, record, run, self.metrics, lambda line: self._log(job_id, line), now):
                self.records.save(record)

    def reload_tenants(self, tenants: TenantsConfig) -> None:
        """Swap the tenants file (validated by the caller); queued and running jobs stay as they are."""
        with self.lock:
            self.tenants = tenants

    def ping(self) -> dict[str, Any]:
        with self.lock:
            return {"jobs": len(self.jobs), "running": len(self.live), "store": self.store.root}

    # ---------------------------------------------------------------- loop
    def tick(self) -> None:
        """Reap ended runs, fail hung ones, admit what the policy says, charge and update gauges."""
        self._reap()
        self._admit()
        with self.lock:
            self.chargeback.tick(list(self.jobs.values()), self.tenants, self.clock.now())

    def _reap(self) -> None:
        with self.lock:
            runs = list(self.live.items())
        for job_id, run in runs:
            outcome = self.launcher.poll(job_id)  # outside the lock: it may wait on Ray
            if outcome is not None:
                self._finish(job_id, outcome)
            elif self.clock.now() - run.last_progress > self.hang_timeout_s:
                self.launcher.kill(job_id)
                self._finish(job_id, RunOutcome.failed(
                    f"no progress for {self.hang_timeout_s:.0f} s — the job hung and was stopped"))

    def _finish(self, job_id: str, outcome: RunOutcome) -> None:
        with self.lock:
            self.live.pop(job_id, None)
            record = self.jobs[job_id]
            self._release(record)  # however the run ended: its workers' resources free now
            if record.state.is_terminal():
                return  # cancelled meanwhile: terminal states never change
            now = self.clock.now()
            if outcome.state is RunState.PREEMPTED:
                record.last_checkpoint_step = outcome.step
                record.progress = {}
                record.transition(JobState.QUEUED, now, EventKind.PREEMPTED,
                                  f"preempted: checkpoint at step {outcome.step}; re-queued, resumes from it")
                self.metrics.preemptions.labels(record.tenant).inc()
                self.metrics.drop_job(job_id)
                self._log(job_id, f"preempted at step {outcome.step}; re-queued")
                self._persist(record)
                return
            state = ENDED[outcome.state]
            record.reason = outcome.reason
            record.adapter_uri = outcome.adapter_uri
            record.metrics = outcome.metrics or {}
            record.transition(state, now, message=record.reason or f"adapter at {record.adapter_uri}")
            self.metrics.job_ended(record.tenant, job_id, state.value.lower(), self._duration(record),
                                   outcome.adapter_bytes)
            self._log(job_id, f"{state.value.lower()}" + (f": {record.reason}" if record.reason else ""))
            self._persist(record)

    def _admit(self) -> None:
        with self.lock:
            queued = [j for j in self.jobs.values() if j.state is JobState.QUEUED]
            if not queued:
                return
            now = self.clock.now()
            running = [j.running(now) for j in self.jobs.values() if j.state is JobState.RUNNING]
            t0 = time.perf_counter()  # the decision's own cost (a duration, not the clock)
            decision = decide([j.request() for j in queued], running, self.capacity.cluster(running), self.tenants,
                              now)
            self.metrics.decisions.inc()
            self.metrics.decision_seconds.observe(time.perf_counter() - t0)
            for job_id in decision.start:
                self._start(self.jobs[job_id], now)
            if decision.preempt and not any(run.preempting for run in self.live.values()):
                for job_id in decision.preempt:  # one preemption at a time: victims free first
                    self._preempt(self.jobs[job_id], decision.preempt_for, now)

    def _start(self, record: JobRecord, now: float) -> None:
        try:
            spec = validate_spec(record.spec)
        except SpecError as e:  # a record older than a change to the schema: it can never run
            self._finish(record.job_id, RunOutcome.failed(f"{type(e).__name__}: {e}"))
            return
        self.launcher.start(record.job_id, spec, self.store.root)
        self.live[record.job_id] = LiveRun(last_progress=now)
        record.placement_groups = []
        record.attempts += 1
        self.metrics.queue_wait.labels(record.tenant).observe(max(0.0, now - record.submitted_at))
        record.transition(JobState.RUNNING, now, EventKind.STARTED,
                          f"started with {record.workers} worker(s) (attempt {record.attempts})")
        self._log(record.job_id, f"started: {record.workers} worker(s)")
        self.records.save(record)

    def _preempt(self, record: JobRecord, for_job: str | None, now: float) -> None:
        """Ask a running job to checkpoint and stop; its run then ends PREEMPTED."""
        run = self.live.get(record.job_id)
        if run is None:
            return
        run.preempting = True
        self.launcher.preempt(record.job_id)
        record.note(now, EventKind.PREEMPTING, f"preempting for higher-priority job {for_job}: checkpoint, then re-queue")
        self._log(record.job_id, f"preempting for {for_job}")
        self.records.save(record)

    # ---------------------------------------------------------------- helpers
    def _get(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise LorafarmError(f"job {job_id!r} not found — list jobs with `lorafarm list`")
        return record

    def _log(self, job_id: str, line: str) -> None:
        self.logs.add(job_id, self.clock.now(), line)

    def _release(self, record: JobRecord) -> None:
        """Free the placement groups of the job's (stopped) workers now."""
        if record.placement_groups:
            self.launcher.release(record.placement_groups)
            record.placement_groups = []

    def _persist(self, record: JobRecord) -> None:
        """Save the record and the job's log (a run has ended)."""
        self.records.save(record)
        self.logs.save(self.store, record.tenant, record.job_id)

    @staticmethod
    def _duration(record: JobRecord) -> float | None:
        return (record.ended_at - record.started_at) if record.started_at and record.ended_at else None
