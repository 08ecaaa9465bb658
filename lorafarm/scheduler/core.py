"""The scheduler's logic: every job's state transitions and admission through the pure
``policy``, with no Ray and no system clock in it.

It is the only writer of job records. On start it recovers every job from the store before it
accepts new ones; then each :meth:`SchedulerCore.tick` reaps ended runs, fails hung ones, asks
``policy.decide`` which queued jobs start and starts them through the launcher. What it is
handed (see :mod:`.seams`): a clock, a launcher for runners and a capacity view. What runners
report is applied in :mod:`.reports`; what tenants hold and are charged in :mod:`.usage`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..auth import Caller, Forbidden
from ..cotrain.compat import PACK_FAILED, scheduler_pack_key
from ..errors import JobNotFound, SpecError
from ..estimate.live import LiveEstimates
from ..events import Event, GroupStarted, RunOutcome, RunState, Step
from ..metrics import Metrics
from ..policy import RunningJob, job_priority, submission_problems
from ..policy.quota import Usage, usage_by_tenant, within_quota
from ..spec import JobSpec, TenantsConfig, validate_spec
from ..storage import Store, new_job_id, read_manifest
from .autoscale import AutoscaleRequests, autoscaling_enabled, gang_bundles
from .elastic import NodeFollower, fit_for, job_nodes
from .heap import RecordHeap
from .jobindex import JobIndex
from .joblog import JobLogs
from .records import RecordStore
from .reports import LiveRun, apply_event
from .seams import Capacity, Clock, Launcher
from .state import EventKind, JobRecord, JobState, check_state
from .trust import trust_problems
from .usage import Chargeback, tenants_usage

ENDED = {RunState.SUCCEEDED: JobState.SUCCEEDED, RunState.FAILED: JobState.FAILED}
# new estimates reach a queue of up to this many jobs on the tick they are learned; a longer
# queue takes them at most every ESTIMATE_REFRESH_S (re-estimating it costs ~1 µs a job)
REFRESH_EVERY_TICK = 2_000
ESTIMATE_REFRESH_S = 10.0
RECONCILE_S = 60.0  # how often the job index is compared with a scan of every record (O(records))


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
        self.index = JobIndex(tenants)  # queued (in policy order) and running jobs, counts: no scans per tick
        self._specs: dict[str, JobSpec] = {}  # job id -> its validated spec, until it ends (validated once)
        self.live: dict[str, LiveRun] = {}  # job id -> its current run, while RUNNING
        self._regroup_wait: dict[str, list[JobRecord]] = {}  # pack id -> members checkpointed to regroup, till all have
        self.logs = JobLogs()
        self.metrics = Metrics()
        self.chargeback = Chargeback(self.metrics, clock.now())
        self.heap = RecordHeap()  # the records out of the cyclic collector's way
        self.nodes = NodeFollower()  # alive nodes at the last tick: losses resize or re-queue jobs
        self.autoscaler = AutoscaleRequests(autoscaling_enabled())  # asks Ray for nodes for a blocked head
        self.estimates = LiveEstimates(store.root)  # learned step times, persisted in <store>/_service
        self.recover()
        self.estimates.learn_records(self.jobs.values())
        self._generation = self.estimates.estimator.generation
        self._refreshed_at = self._reconciled_at = clock.now()
        for record in self.jobs.values():
            self._moved(record)
        self.heap.grew(len(self.jobs))  # the recovered records: out of the collector's way from now on

    # ---------------------------------------------------------------- recovery
    def recover(self) -> None:
        """Load every record; jobs that were RUNNING lost their runner with the old scheduler
        (runners are owned by it): their leftover workers are removed and they go back to QUEUED,
        to resume from their latest checkpoint (or finish as SUCCEEDED if they had published)."""
        for record in self.records.load_all():
            self.jobs[record.job_id] = record
            self.logs.open(record.job_id)
            now = self.clock.now()
            if not record.state.is_terminal() and "pack_key" not in record.model_fields_set:
                record.pack_key = _pack_key_of(record)  # a record from before co-training
            if record.state is JobState.RUNNING:
                self.launcher.kill_leftover(record.pack or record.job_id)  # a pack's runner is named by its pack
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

    def adopt(self, record: JobRecord) -> None:
        """Take in a record built elsewhere (a benchmark's or a replay's), its spec validated as
        a submission's is (SpecError when it does not)."""
        spec = validate_spec(record.spec)
        with self.lock:
            self._specs[record.job_id] = spec
            self.jobs[record.job_id] = record
            self.logs.open(record.job_id)
            self._moved(record)

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
    # ``caller`` (lorafarm.auth.Caller) is who the key sent belongs to; None when keys are off
    # (one team) or for in-process callers. A tenant acts only on its own jobs; admin on all.
    def submit(self, spec_dict: dict[str, Any], job_id: str | None = None, caller: Caller | None = None
               ) -> dict[str, Any]:
        spec = self._owned_spec(spec_dict, caller)
        r = spec.resources
        record = JobRecord(
            job_id=job_id or new_job_id(spec.name), tenant=spec.tenant, name=spec.name,
            spec=spec.model_dump(mode="json"), priority=job_priority(self.tenants, spec.tenant, spec.priority),
            workers=r.workers, cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
            submitted_at=self.clock.now(), state=JobState.QUEUED, pack_key=scheduler_pack_key(spec),
        )
        problems = trust_problems(spec, self.tenants, self.store.root)
        capacity = self.capacity.cluster(()) if not problems else None  # totals: could it ever fit
        if capacity is not None and self.autoscaler.enabled:  # the cluster can grow: only quotas bound a job
            capacity = {"cpus": float("inf"), "gpus": float("inf")}
        with self.lock:
            if capacity is not None:
                problems = submission_problems(record.request(), self.tenants, capacity, self.index.queued_by_tenant())
            if problems:
                raise SpecError(problems)
            record.note(record.submitted_at, EventKind.SUBMITTED, f"submitted by tenant {spec.tenant}")
            self.jobs[record.job_id] = record
            self._specs[record.job_id] = spec
            self._moved(record)
            self.logs.open(record.job_id)
            self._log(record.job_id, "queued")
            self.records.save(record)
            self.store.write_spec(spec.tenant, record.job_id, spec)
            return record.summary()

    def checked_spec(self, spec_dict: dict[str, Any], caller: Caller | None = None) -> JobSpec:
        """The spec, validated, the caller's own and within its tenant's trust rules — what must hold
        before anything reads the data it names (the REST API's preflight runs after this)."""
        spec = self._owned_spec(spec_dict, caller)
        problems = trust_problems(spec, self.tenants, self.store.root)
        if problems:
            raise SpecError(problems)
        return spec

    def _owned_spec(self, spec_dict: dict[str, Any], caller: Caller | None) -> JobSpec:
        spec = validate_spec(spec_dict)
        if caller is not None and not caller.may_act_for(spec.tenant):
            raise Forbidden(f"tenant: {spec.tenant!r} is not the tenant of the key sent ({caller.tenant!r}) — a key "
                            f"submits only its own tenant's jobs: set tenant: {caller.tenant}")
        return spec

    def status(self, job_id: str, caller: Caller | None = None) -> dict[str, Any]:
        with self.lock:
            return self._with_eta([self._get(job_id, caller).summary()])[0]

    def list(self, tenant: str | None = None, state: str | None = None, caller: Caller | None = None
             ) -> list[dict[str, Any]]:
        if state is not None:
            check_state(state)
        if caller is not None and not caller.admin:
            if tenant is not None and tenant != caller.tenant:
                raise Forbidden(f"--tenant {tenant}: the key sent is tenant {caller.tenant!r}'s — it lists only "
                                "that tenant's jobs (drop --tenant)")
            tenant = caller.tenant
        with self.lock:
            return self._with_eta([
                j.summary() for j in sorted(self.jobs.values(), key=lambda j: j.submitted_at)
                if (tenant is None or j.tenant == tenant) and (state is None or j.state.value == state.upper())])

    def events(self, job_id: str, caller: Caller | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e.model_dump(mode="json") for e in self._get(job_id, caller).events]

    def logs_since(self, job_id: str, offset: int = 0, caller: Caller | None = None) -> tuple[list[str], int, bool]:
        with self.lock:
            record = self._get(job_id, caller)
            lines = self.logs.lines(job_id)
            return lines[offset:], len(lines), record.state.is_terminal()

    def cancel(self, job_id: str, caller: Caller | None = None) -> dict[str, Any]:
        with self.lock:
            record = self._get(job_id, caller)
            if record.state.is_terminal():
                return record.summary()
            now = self.clock.now()
            record.note(now, EventKind.CANCEL_REQUESTED, "cancel requested")
            stopped = self.launcher.kill(job_id)
            self.autoscaler.clear(job_id)
            if self.live.pop(job_id, None) is not None:
                self._estimate_ended(record)
            self._release(record)
            record.transition(JobState.CANCELLED, now, message="cancelled by request" + (
                "; workers stopped" if stopped else ""))
            self._moved(record)
            self.metrics.job_ended(record.tenant, job_id, "cancelled", self._duration(record), 0)
            record.reason = "cancelled"
            self._log(job_id, "cancelled")
            self._persist(record)
            return record.summary()

    def tenants_usage(self, caller: Caller | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = tenants_usage(list(self.jobs.values()), self.tenants, self._running(self.clock.now()))
        return rows if caller is None or caller.admin else [r for r in rows if r["tenant"] == caller.tenant]

    def report(self, job_id: str, event: Event) -> None:
        """An event from a job's runner (fire-and-forget)."""
        with self.lock:
            record, run = self.jobs.get(job_id), self.live.get(job_id)
            if record is None or run is None or record.state is not JobState.RUNNING:
                return
            now = self.clock.now()
            run.last_progress = now
            if isinstance(event, Step):
                self.estimates.step(record, event.step, event.step_time_s, event.total_steps, event.total_params)
            if apply_event(event, record, run, self.metrics, lambda line: self._log(job_id, line), now):
                self.records.save(record)
            if isinstance(event, GroupStarted):  # its workers' real nodes: the policy's view follows
                self.index.reshaped(record)

    def reload_tenants(self, tenants: TenantsConfig) -> None:
        """Swap the tenants file (validated by the caller); queued and running jobs stay as they are."""
        with self.lock:
            self.tenants = tenants
            self.index.queue.set_tenants(tenants)

    def ping(self) -> dict[str, Any]:
        with self.lock:
            return {"jobs": len(self.jobs), "running": len(self.live), "store": self.store.root}

    # ---------------------------------------------------------------- loop
    def tick(self) -> None:
        """Follow nodes, reap ended runs, fail hung ones, admit what the policy says, charge and update gauges."""
        self.heap.grew(len(self.jobs))
        self._follow_nodes()
        self._reap()
        if self.launcher.sweep():  # outside the lock: it asks Ray
            print("lorafarm scheduler: removed the worker group(s) of a run stopped while it started", flush=True)
        self._reconcile()
        self._admit()
        with self.lock:
            now = self.clock.now()
            self.chargeback.tick(self.index, self.tenants, now, self._running(now))
            self.records.settle()  # records of earlier batches get their own files, a few hundred a tick

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
        if outcome.state is RunState.FAILED and self._lost_nodes_of(job_id):
            return  # the run failed because a node it ran on died: resized or re-queued, not failed
        with self.lock:
            run = self.live.pop(job_id, None)
            record = self.jobs[job_id]
            self._release(record)  # however the run ended: its workers' resources free now
            if record.state.is_terminal():
                return  # cancelled meanwhile: terminal states never change
            now = self.clock.now()
            if not (outcome.state is RunState.PREEMPTED and run is not None and run.growing):
                self._estimate_ended(record)
            if outcome.state is RunState.PREEMPTED and run is not None and run.growing:
                record.last_checkpoint_step = outcome.step
                self._resize(record, now, f"capacity returned: growing at checkpoint step {outcome.step}")
                return
            if outcome.state is RunState.FAILED and record.pack is not None and (outcome.reason or "").startswith(
                    PACK_FAILED):  # the shared gang failed, not this job: it runs again, alone, as it would have
                self._pack_failed(record, outcome.reason or "", now)
                return
            if outcome.state is RunState.PREEMPTED and run is not None and run.regrouping:
                record.last_checkpoint_step = outcome.step
                self._regrouped(record, now)
                return
            if outcome.state is RunState.PREEMPTED:
                record.last_checkpoint_step = outcome.step
                record.progress = {}
                record.transition(JobState.QUEUED, now, EventKind.PREEMPTED,
                                  f"preempted: checkpoint at step {outcome.step}; re-queued, resumes from it")
                self._moved(record)
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
            self._moved(record)
            self.metrics.job_ended(record.tenant, job_id, state.value.lower(), self._duration(record),
                                   outcome.adapter_bytes)
            self._log(job_id, f"{state.value.lower()}" + (f": {record.reason}" if record.reason else ""))
            self._persist(record)

    def _admit(self) -> None:
        with self.lock, self.records.batch():  # a burst of starts: their records written as one batch
            queue = self.index.queue
            if not len(queue):
                self.autoscaler.clear()
                if any(j.run_workers for j in self.index.running.values()):
                    self._grow_shrunk(self.clock.now())  # nothing waits: a shrunk job may grow back
                return
            now = self.clock.now()
            if self.estimates.estimator.generation != self._generation and (
                    len(queue) <= REFRESH_EVERY_TICK or now - self._refreshed_at >= ESTIMATE_REFRESH_S):
                self._refresh_estimates(now)
            running = self._running(now)
            t0 = time.perf_counter()  # the decision's own cost (a duration, not the clock)
            decision = queue.decide(running, self.capacity.cluster(running), now)  # = policy.decide on the queue
            self.metrics.decisions.inc()
            self.metrics.decision_seconds.observe(time.perf_counter() - t0)
            for job_id in decision.start:
                record = self.jobs[job_id]
                if record.state is not JobState.QUEUED:  # never: the index follows every transition
                    queue.remove(job_id)
                    continue
                members = [self.jobs[m] for m in decision.packs.get(job_id, ())
                           if self.jobs[m].state is JobState.QUEUED]
                if members:
                    self._start_pack([record, *members], now, decision.placements.get(job_id, ()))
                else:
                    self._start(record, now, decision.placements.get(job_id, ()))
            if not decision.start and decision.reserved_for is None:
                self._grow_shrunk(now)
            # with autoscaling on, a head that fits no node now is waiting for nodes too; on a full
            # cluster decide stops before it names a head: the oldest job still queued is it
            head = decision.reserved_for or next(iter(decision.never_fits), None)
            if head is None and not decision.start and self.autoscaler.enabled and len(queue):
                head = min(queue.jobs(), key=lambda j: j.submitted_at).job_id
            self._ask_for_nodes(head, now)
            for pack_id, joiners in decision.regroup.items():
                self._regroup(pack_id, len(joiners), now)
            if decision.preempt and not any(run.preempting for run in self.live.values()):
                for job_id in decision.preempt:  # one preemption at a time: victims free first
                    self._preempt(self.jobs[job_id], decision.preempt_for, now)

    def _start(self, record: JobRecord, now: float, placement=()) -> None:
        if not self._launch(record, now, record.workers, placement):
            return
        record.estimate = {"at_start_s": self.estimates.started(record)}
        record.attempts += 1
        self.metrics.for_tenant(self.metrics.queue_wait, record.tenant).observe(max(0.0, now - record.submitted_at))
        record.transition(JobState.RUNNING, now, EventKind.STARTED,
                          f"started with {record.workers} worker(s) (attempt {record.attempts})")
        self._moved(record)
        self._log(record.job_id, f"started: {record.workers} worker(s)")
        self.records.save(record)

    def _start_pack(self, records: list[JobRecord], now: float, placement=()) -> None:
        """Start ``records`` (the first's gang, chosen by ``policy.packing``) as one co-trained
        pack: one runner, each member its own job (state, events, checkpoints, adapter)."""
        specs = [(r, self._run_spec(r)) for r in records]
        members = [(r, spec) for r, spec in specs if spec is not None]
        if len(members) < 2:
            for r, _ in members:
                self._start(r, now, placement)
            return
        pack_id = f"pack-{members[0][0].job_id}-{members[0][0].attempts + 1}"
        self.launcher.start_pack(pack_id, [(r.job_id, spec) for r, spec in members], self.store.root,
                                 **({"placement": tuple(placement)} if placement else {}))
        k = len(members)
        for r, _ in members:
            self.live[r.job_id] = LiveRun(last_progress=now)
            r.placement_groups, r.worker_nodes, r.run_workers = [], [], None
            r.placement = [(n, w) for n, w in placement]
            r.pack, r.pack_members = pack_id, k
            r.estimate = {"at_start_s": self.estimates.started(r)}
            r.attempts += 1
            self.metrics.for_tenant(self.metrics.queue_wait, r.tenant).observe(max(0.0, now - r.submitted_at))
            r.transition(JobState.RUNNING, now, EventKind.STARTED,
                         f"started with {r.workers} worker(s) (attempt {r.attempts}), co-trained: one of {k} jobs "
                         f"sharing the gang and base, charged 1/{k} of it")
            self._moved(r)
            self._log(r.job_id, f"started: {r.workers} worker(s), co-trained in a pack of {k}")
            self.records.save(r)

    def _regroup(self, pack_id: str, joiners: int, now: float) -> None:
        """Ask every member of a running pack to checkpoint at its next step boundary, so that
        the pack starts again with ``joiners`` waiting jobs (``policy.packing``'s regroup)."""
        members = [(self.jobs[j], run) for j, run in self.live.items() if self.jobs[j].pack == pack_id]
        if not members or any(run.preempting for _, run in members):
            return  # already checkpointing (for this or another reason)
        for record, run in members:
            run.preempting = run.regrouping = True
            self.launcher.preempt(record.job_id)
            record.note(now, EventKind.PREEMPTING, f"checkpoint at the next step boundary: {joiners} more job(s) join "
                        "its pack, which starts again with them (it resumes from that checkpoint)")
            self._log(record.job_id, f"regrouping its pack: {joiners} job(s) join")
            self.records.save(record)

    def _regrouped(self, record: JobRecord, now: float) -> None:
        """A member checkpointed for its pack to regroup. It holds its share of the gang until
        every member has, then all go back to the queue together (with the newcomers there, the
        next decision packs them again)."""
        self._regroup_wait.setdefault(record.pack, []).append(record)
        if any(self.jobs[j].pack == record.pack for j in self.live):
            return  # others still checkpointing: the gang is still held
        for r in self._regroup_wait.pop(record.pack):
            if r.state is not JobState.RUNNING or r.job_id in self.live:
                continue  # cancelled, or restarted after a node loss, while it waited
            step = r.last_checkpoint_step
            r.progress = {}
            r.transition(JobState.QUEUED, now, EventKind.PREEMPTED,
                         f"checkpoint at step {step} for its pack to take in new members; re-queued, resumes from it")
            self._moved(r)
            self._log(r.job_id, f"checkpointed at step {step} to regroup its pack; re-queued")
            self._persist(r)

    def _pack_failed(self, record: JobRecord, reason: str, now: float) -> None:
        """The pack's gang failed (a dead worker, an out-of-memory kill): alone, Ray Train would
        have restarted the job's workers from its checkpoint. The member is re-queued to run
        alone (never packed again), resuming from its own latest checkpoint."""
        record.pack_key = None
        record.last_checkpoint_step = self._checkpoint_step(record) or record.last_checkpoint_step
        step = record.last_checkpoint_step
        record.progress = {}
        record.transition(JobState.QUEUED, now, EventKind.FAILURE,
                          f"{reason[:500]}; re-queued to run alone, resumes from "
                          + (f"checkpoint step {step}" if step else "the start (no checkpoint)"))
        self._moved(record)
        self._log(record.job_id, "its pack failed; re-queued to run alone")
        self._persist(record)

    def _run_spec(self, record: JobRecord) -> JobSpec | None:
        """The job's validated spec; None when it no longer validates (it has failed then)."""
        spec = self._specs.get(record.job_id)
        if spec is None:  # recovered: validated once, at its first start under this scheduler
            try:
                spec = self._specs[record.job_id] = validate_spec(record.spec)
            except SpecError as e:  # a record older than a change to the schema: it can never run
                self._finish(record.job_id, RunOutcome.failed(f"{type(e).__name__}: {e}"))
                return None
        return spec

    def _launch(self, record: JobRecord, now: float, workers: int, placement) -> bool:
        """Start a run of the job on ``workers`` workers (planned on ``placement``); False when
        its spec no longer validates (it has failed then)."""
        spec = self._run_spec(record)
        if spec is None:
            return False
        record.pack = record.pack_members = None  # alone
        if workers != spec.resources.workers:  # an elastic job on fewer workers: same global batch
            spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"workers": workers})})
        pinned = {"placement": tuple(placement)} if placement else {}  # only per-node clusters have one
        self.launcher.start(record.job_id, spec, self.store.root, **pinned)
        self.live[record.job_id] = LiveRun(last_progress=now)
        record.placement_groups = []
        record.placement = [(n, k) for n, k in placement]
        record.worker_nodes = []
        record.run_workers = workers if workers != record.workers else None
        self.index.reshaped(record)
        return True

    # ---------------------------------------------------------------- nodes
    def _ask_for_nodes(self, head: str | None, now: float) -> None:
        """With autoscaling on, ask for the blocked head's gang (it is within its quota: only
        capacity holds it back); drop the request once no job is blocked or another is the head."""
        if head is None or not self.autoscaler.enabled:
            self.autoscaler.clear()
            return
        record = self.jobs[head]
        r = record.request()
        running = self._running(now)
        if not within_quota(r, usage_by_tenant(running).get(record.tenant) or Usage(), self.tenants):
            self.autoscaler.clear()  # its quota holds it back, not capacity: more nodes would not help
            return
        bundles = gang_bundles(record.workers, record.cpus_per_worker, record.gpus_per_worker, r.accelerator_type)
        if self.autoscaler.for_job not in (None, head):
            self.autoscaler.clear()
        if self.autoscaler.want(head, bundles):
            shape = f"{record.cpus_per_worker:g} CPUs" + (f", {record.gpus_per_worker:g} GPUs" if record.gpus_per_worker
                                                         else "")
            record.note(now, EventKind.WAITING_FOR_NODES, f"waiting for nodes: asked Ray's autoscaler for "
                        f"{record.workers} × ({shape})", {"bundles": bundles})
            self._log(head, "waiting for nodes (autoscaler asked)")
            self.records.save(record)

    def _follow_nodes(self) -> None:
        """Compare the alive nodes with the last tick's: log joins, and stop every run that had
        workers on a node that left (resized or re-queued, see :meth:`_node_lost`)."""
        with self.lock:
            running = self._running(self.clock.now())
        cluster = self.capacity.cluster(running)
        if cluster.nodes is None:
            return
        with self.lock:
            joined, lost = self.nodes.update(cluster.nodes)
            for node in joined:
                print(f"lorafarm scheduler: node {node.name[:12]} ({node.ip}, {node.shape()}) joined", flush=True)
            gone = {n.name: n for n in lost}
            for node in lost:
                print(f"lorafarm scheduler: node {node.name[:12]} ({node.ip}) left", flush=True)
            if gone:
                for record in list(self.index.running.values()):
                    if job_nodes(record) & set(gone):
                        self._node_lost(record, [gone[n] for n in job_nodes(record) & set(gone)])

    def _lost_nodes_of(self, job_id: str) -> bool:
        """For a failed run: whether a node it ran on is gone (its raylet no longer answers);
        if so the job is handled as a node loss."""
        with self.lock:
            record = self.jobs.get(job_id)
            nodes = job_nodes(record) if record is not None and record.state is JobState.RUNNING else set()
        probe = getattr(self.capacity, "unreachable", None)
        dead = probe(nodes) if nodes and probe is not None else set()
        if not dead:
            return False
        with self.lock:
            if record.state is not JobState.RUNNING:
                return False
            known = self.nodes.alive or {}
            self._node_lost(record, [known[n] for n in dead if n in known] or list(dead))
        return True

    def _node_lost(self, record: JobRecord, lost: list) -> None:
        """A node the job ran on died: stop what is left of the run, then restart it on the
        largest size that fits in ``[min_workers, workers]`` or, if none, re-queue it; it
        resumes from its latest checkpoint either way."""
        now = self.clock.now()
        self.launcher.kill(record.job_id)
        self.live.pop(record.job_id, None)
        self._release(record)
        names = ", ".join(getattr(n, "ip", "") or str(getattr(n, "name", n))[:12] for n in lost)
        ids = [getattr(n, "name", n) for n in lost]
        step = record.last_checkpoint_step
        record.note(now, EventKind.NODE_LOST, f"node {names} lost while the job ran on it; resumes from "
                    + (f"checkpoint step {step}" if step else "the start (no checkpoint)"),
                    {"nodes": ids, "step": step})
        self.metrics.node_losses.labels(record.tenant).inc()
        self._log(record.job_id, f"node {names} lost")
        lost_ids = set(ids)
        record.placement = [(n, k) for n, k in record.placement if n not in lost_ids]
        record.worker_nodes = [w for w in record.worker_nodes if w.get("node_id") not in lost_ids]
        self.index.reshaped(record)  # the fit below sees it without the lost node's workers
        self._resize(record, now, f"node {names} lost")

    def _resize(self, record: JobRecord, now: float, why: str) -> None:
        """Restart the job (its run has stopped) at the largest size that fits now, or re-queue it."""
        before = record.run_workers or record.workers
        running = self._running(now)
        fit = fit_for(record, self.capacity.cluster(running), tuple(record.placement))
        step = record.last_checkpoint_step
        if fit is None:
            record.progress = {}
            record.placement, record.worker_nodes, record.run_workers = [], [], None
            record.transition(JobState.QUEUED, now, EventKind.NODE_LOST if "lost" in why else EventKind.STATE,
                              f"{why}: {before} worker(s) no longer fit (at least {record.min_workers} needed); "
                              "re-queued, resumes from " + (f"checkpoint step {step}" if step else "the start"))
            self._moved(record)
            self._log(record.job_id, "re-queued: the gang no longer fits")
            self._persist(record)
            return
        size, placement = fit
        if size != before:
            record.note(now, EventKind.RESIZED, f"{why}: resized from {before} to {size} worker(s) at checkpoint "
                        f"step {step or 0} (same global batch)", {"from": before, "to": size, "step": step or 0})
            self.metrics.resizes.labels(record.tenant).inc()
            self._log(record.job_id, f"resized {before} -> {size} workers at step {step or 0}")
        self._launch(record, now, size, placement)
        record.attempts += 1
        self.records.save(record)

    def _grow_shrunk(self, now: float) -> None:
        """Nothing queued waits for capacity: a shrunk elastic job whose full size (or a larger
        one) fits again checkpoints and restarts larger (one job at a time)."""
        if any(run.preempting for run in self.live.values()):
            return
        running = self._running(now)
        for record in list(self.index.running.values()):
            run = self.live.get(record.job_id)
            if not record.run_workers or run is None:
                continue
            fit = fit_for(record, self.capacity.cluster(running), tuple(record.placement))
            if fit is not None and fit[0] > record.run_workers:
                run.preempting = run.growing = True
                self.launcher.preempt(record.job_id)
                record.note(now, EventKind.PREEMPTING, f"{fit[0]} workers fit again: checkpoint, then grow from "
                            f"{record.run_workers}")
                self._log(record.job_id, f"growing to {fit[0]} workers at the next checkpoint")
                self.records.save(record)
                return

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

    # ---------------------------------------------------------------- estimates
    def _estimate_ended(self, record: JobRecord) -> None:
        """A run ended: the estimator learns from it; estimate vs actual goes on the record and
        into ``lorafarm_estimate_error_ratio``."""
        figures = self.estimates.finished(record, (record.estimate or {}).get("at_start_s"))
        if figures:
            record.estimate = {**record.estimate, **figures}
            self.metrics.estimate_error.observe(figures["ratio"])

    def _with_eta(self, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``summaries`` with ``eta_start`` (queued) and ``eta_end`` (queued and running), from
        the queue ahead and the estimates (:mod:`lorafarm.estimate.eta`); None when unknown."""
        if not any(s["state"] in ("QUEUED", "RUNNING") for s in summaries):
            return [{**s, "eta_start": None, "eta_end": None, "estimated_remaining_s": None} for s in summaries]
        now = self.clock.now()
        running = self._running(now)
        cluster = self.capacity.cluster(running)  # what the policy sees: free now plus what running jobs hold
        total_cpus = cluster.free_cpus + sum(j.cpus for j in running)
        total_gpus = cluster.free_gpus + sum(j.gpus for j in running)
        classes, fallback = self.tenants.priority_classes, self.tenants.priority_value(self.tenants.default_priority)
        etas = self.estimates.etas(
            self.jobs.values(), now, total_cpus, total_gpus,
            lambda r: (-classes.get(r.priority, fallback), self.estimates.queued_estimate(r) or math.inf,
                       r.submitted_at, r.job_id))
        out = []
        for s in summaries:
            start, end = etas.get(s["job_id"], (None, None))
            record = self.jobs.get(s["job_id"])
            left = None if record is None else (self.estimates.queued_estimate(record) if s["state"] == "QUEUED"
                                                else self.estimates.remaining(record) if s["state"] == "RUNNING"
                                                else None)
            out.append({**s, "eta_start": start if s["state"] == "QUEUED" else None,
                        "eta_end": end if s["state"] in ("QUEUED", "RUNNING") else None,
                        "estimated_remaining_s": None if left is None else round(left, 3)})
        return out

    def _reconcile(self) -> None:
        """Every ``RECONCILE_S``: the job index against a scan of every record; rebuilt (and said
        so) if a state change ever bypassed :meth:`_moved`, so no queued job is lost to it."""
        with self.lock:
            now = self.clock.now()
            if now - self._reconciled_at < RECONCILE_S:
                return
            self._reconciled_at = now
            problems = self.index.problems(self.jobs.values())
            if not problems:
                return
            print(f"lorafarm scheduler: job index rebuilt ({'; '.join(problems)[:500]})", flush=True)
            self.index = JobIndex(self.tenants)
            for record in self.jobs.values():
                self._moved(record)

    def _refresh_estimates(self, now: float) -> None:
        """Something was learned: give the queue the new estimates (re-keying only the jobs whose
        figure moved). O(queued), so a long queue takes them at most every ``ESTIMATE_REFRESH_S``."""
        self._generation = self.estimates.estimator.generation
        self._refreshed_at = now
        queue = self.index.queue
        for job_id in self.index.queued_ids():
            request = self.estimates.request(self.jobs[job_id])
            if request != queue.get(job_id):
                queue.put(request, now)

    # ---------------------------------------------------------------- helpers
    def _moved(self, record: JobRecord) -> None:
        """Keep :attr:`index` true: called after every state change (and insertion) of a record."""
        if record.state.is_terminal():
            self._specs.pop(record.job_id, None)
        self.index.moved(record, self.estimates.request(record) if record.state is JobState.QUEUED else None,
                         self.clock.now())

    def _running(self, now: float) -> Sequence[RunningJob]:
        """The running jobs as the policy sees them (current size and nodes)."""
        return self.index.running_jobs(now)

    def _get(self, job_id: str, caller: Caller | None = None) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None or (caller is not None and not caller.may_act_for(record.tenant)):  # others' are unseen
            raise JobNotFound(f"job {job_id!r} not found — list jobs with `lorafarm list`")
        return record

    def _log(self, job_id: str, line: str) -> None:
        self.logs.add(job_id, self.clock.now(), line)

    def _release(self, record: JobRecord) -> None:
        """Free the placement groups of the job's (stopped) workers now; a pack member's gang
        only once no other member of its pack runs (the pack's runner holds it till then)."""
        if record.placement_groups:
            if record.pack is None or not any(
                    self.jobs[j].pack == record.pack for j in self.live if j != record.job_id):
                self.launcher.release(record.placement_groups)
            record.placement_groups = []

    def _persist(self, record: JobRecord) -> None:
        """Save the record and the job's log (a run has ended)."""
        self.records.save(record)
        self.logs.save(self.store, record.tenant, record.job_id)

    @staticmethod
    def _duration(record: JobRecord) -> float | None:
        return (record.ended_at - record.started_at) if record.started_at and record.ended_at else None


def _pack_key_of(record: JobRecord) -> str | None:
    """A recovered record's pack key (None when its spec no longer validates: it fails at start)."""
    try:
        return scheduler_pack_key(validate_spec(record.spec))
    except SpecError:
        return None
