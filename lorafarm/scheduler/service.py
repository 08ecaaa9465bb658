"""The scheduler: one detached, named Ray actor per cluster (namespace ``lorafarm``).

It is the only writer of job records. On start it recovers every job from the store before
it accepts new ones; then an admission loop asks the pure ``policy`` which queued jobs to
start, and starts a :class:`Runner` for each. A runner that fails, hangs or dies ends its
job FAILED with the reason; nothing else is affected. Calls are served on a thread pool
(``max_concurrency``), so ``status`` answers while jobs train.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import ray

from ..errors import SpecError
from ..metrics import Metrics
from ..spec import validate_spec
from ..storage import Store, join, write_bytes
from .records import RecordStore
from .state import EventKind, JobRecord, JobState

NAMESPACE = "lorafarm"
SCHEDULER_NAME = "scheduler"
RUNNER_PREFIX = "lorafarm-runner-"
TICK_S = 0.25
LOG_LINES = 5000


class SchedulerCore:
    """The scheduler's logic, independent of being an actor (tests drive it directly too)."""

    def __init__(self, store_uri: str, tenants_text: str | None = None, hang_timeout_s: float = 1800.0,
                 reserve_cpus: float = 0.0, self_handle=None):
        from ..tenants import load_tenants

        self.store = Store.open(store_uri)
        self.records = RecordStore(self.store)
        self.tenants = load_tenants(tenants_text) if tenants_text else load_tenants(None)
        self.hang_timeout_s = hang_timeout_s
        self.reserve_cpus = reserve_cpus
        self.self_handle = self_handle
        self.lock = threading.RLock()
        self.jobs: dict[str, JobRecord] = {}
        self.runners: dict[str, tuple[Any, Any]] = {}  # job_id -> (actor, result ref)
        self.logs: dict[str, collections.deque[str]] = {}
        self.last_progress: dict[str, float] = {}
        self.metrics = Metrics()
        self.tokens_reported: dict[str, float] = {}
        self.preempting: set[str] = set()  # asked to checkpoint and stop, not yet stopped
        self.group_starts: dict[str, int] = {}  # worker-group starts in the current run of a job
        self.last_tick = time.time()
        self.recover()

    # ---------------------------------------------------------------- recovery
    def recover(self) -> None:
        """Load every record; jobs that were RUNNING lost their runner with the old scheduler
        (runners are owned by it): their leftover workers are removed and they go back to QUEUED,
        to resume from their latest checkpoint (or finish as SUCCEEDED if they had published)."""
        for record in self.records.load_all():
            self.jobs[record.job_id] = record
            self.logs[record.job_id] = collections.deque(maxlen=LOG_LINES)
            if record.state is JobState.RUNNING:
                self._kill_runner_by_name(record.job_id)
                self._release(record)
                adapter = self._published_adapter(record)
                if adapter is not None:  # it finished publishing just before the old scheduler died
                    record.adapter_uri = adapter
                    record.transition(JobState.SUCCEEDED, EventKind.RECOVERED,
                                      f"scheduler restarted; the adapter was already published at {adapter}")
                else:
                    step = self._checkpoint_step(record)
                    record.transition(JobState.QUEUED, EventKind.RECOVERED,
                                      "scheduler restarted while the job ran; re-queued, "
                                      + (f"resumes from checkpoint step {step}" if step else "starts over (no checkpoint)"))
                self.records.save(record)
            elif record.state is JobState.VALIDATING:
                record.transition(JobState.QUEUED, EventKind.RECOVERED, "scheduler restarted; queued")
                self.records.save(record)

    def _published_adapter(self, record: JobRecord) -> str | None:
        """The job's adapter URI when a complete adapter (manifest verified) is already in the store."""
        from ..storage import read_manifest

        uri = self.store.adapter_uri(record.tenant, record.job_id)
        try:
            read_manifest(uri)
        except Exception:  # noqa: BLE001 - missing or incomplete: not published
            return None
        return uri

    def _checkpoint_step(self, record: JobRecord) -> int | None:
        from ..worker.checkpoint import latest_checkpoint

        try:
            ref = latest_checkpoint(self.store.job_uri(record.tenant, record.job_id))
        except Exception:  # noqa: BLE001 - an unreadable store only loses the hint
            return None
        return ref.step if ref else None

    def _release(self, record: JobRecord) -> None:
        """Remove the placement groups of the job's (stopped) workers so their resources free now."""
        from .runner import remove_placement_groups

        if record.placement_groups:
            remove_placement_groups(record.placement_groups)
            record.placement_groups = []

    def _kill_runner_by_name(self, job_id: str) -> None:
        try:
            ray.kill(ray.get_actor(RUNNER_PREFIX + job_id, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # no leaked runner

    # ---------------------------------------------------------------- API
    def submit(self, spec_dict: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
        from ..policy import check_admissible
        from ..storage import new_job_id

        spec = validate_spec(spec_dict)
        problems = self._trust_problems(spec)
        tenant = self.tenants.for_tenant(spec.tenant) if not problems else None
        if tenant is None and not problems:
            problems.append(f"tenant: {spec.tenant!r} is not in the tenants file and unknown tenants are rejected "
                            "— ask the operator to add it")
        request = None
        if not problems:
            priority = spec.priority or self.tenants.default_priority_for(spec.tenant)
            allowed = self.tenants.allowed_priorities(spec.tenant)
            if priority not in allowed:
                problems.append(f"priority: {priority!r} is not allowed for tenant {spec.tenant!r} — use one of "
                                f"{', '.join(sorted(allowed))}")
            request = self._request(spec, job_id or new_job_id(spec.name), priority, time.time())
            reason = check_admissible(request, self.tenants, self._capacity())
            if reason:
                problems.append(f"resources: {reason}")
        with self.lock:
            if not problems:
                queued = sum(1 for j in self.jobs.values() if j.tenant == spec.tenant and j.state is JobState.QUEUED)
                limit = self.tenants.max_queued(spec.tenant)
                if limit is not None and queued >= limit:
                    problems.append(f"tenant: {spec.tenant!r} already has {queued} queued jobs (quota max_queued "
                                    f"{limit}) — wait for some to start or cancel one")
            if problems:
                raise SpecError(problems)
            assert request is not None
            record = JobRecord(
                job_id=request.job_id, tenant=spec.tenant, name=spec.name, spec=spec.model_dump(mode="json"),
                priority=request.priority, workers=request.workers, cpus_per_worker=request.cpus_per_worker,
                gpus_per_worker=request.gpus_per_worker, submitted_at=request.submitted_at,
                state=JobState.QUEUED,
            )
            record.note(EventKind.SUBMITTED, f"submitted by tenant {spec.tenant}")
            self.jobs[record.job_id] = record
            self.logs[record.job_id] = collections.deque(maxlen=LOG_LINES)
            self._log(record.job_id, "queued")
            self.records.save(record)
            write_bytes(join(self.store.job_uri(spec.tenant, record.job_id), "spec.yaml"),
                        __import__("yaml").safe_dump(record.spec, sort_keys=False).encode())
            return record.summary()

    def status(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            return self._get(job_id).summary()

    def list(self, tenant: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [j.summary() for j in sorted(self.jobs.values(), key=lambda j: j.submitted_at)
                    if (tenant is None or j.tenant == tenant) and (state is None or j.state.value == state.upper())]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e.model_dump(mode="json") for e in self._get(job_id).events]

    def logs_since(self, job_id: str, offset: int = 0) -> tuple[list[str], int, bool]:
        with self.lock:
            record = self._get(job_id)
            lines = list(self.logs.get(job_id, []))
            return lines[offset:], len(lines), record.state.is_terminal()

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            record = self._get(job_id)
            if record.state.is_terminal():
                return record.summary()
            record.note(EventKind.CANCEL_REQUESTED, "cancel requested")
            runner = self.runners.pop(job_id, None)
            if runner is not None:
                ray.kill(runner[0], no_restart=True)
            self._release(record)
            self.preempting.discard(job_id)
            record.transition(JobState.CANCELLED, message="cancelled by request" + (
                "; workers stopped" if runner else ""))
            duration = (record.ended_at - record.started_at) if record.started_at and record.ended_at else None
            self.metrics.job_ended(record.tenant, job_id, "cancelled", duration, 0)
            self.tokens_reported.pop(job_id, None)
            record.reason = "cancelled"
            self._log(job_id, "cancelled")
            self._persist(record)
            return record.summary()

    def tenants_usage(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            names = sorted({*self.tenants.tenant_names(), *(j.tenant for j in self.jobs.values())})
            for name in names:
                running = [j for j in self.jobs.values() if j.tenant == name and j.state is JobState.RUNNING]
                quota = self.tenants.quota_dict(name)
                out.append({
                    "tenant": name,
                    "quota": quota,
                    "weight": self.tenants.weight(name),
                    "queued": sum(1 for j in self.jobs.values() if j.tenant == name and j.state is JobState.QUEUED),
                    "running": len(running),
                    "usage": {
                        "workers": sum(j.workers for j in running),
                        "cpus": sum(j.workers * j.cpus_per_worker for j in running),
                        "gpus": sum(j.workers * j.gpus_per_worker for j in running),
                    },
                })
            return out

    def report(self, job_id: str, event: dict[str, Any]) -> None:
        """Progress from a runner (fire-and-forget)."""
        with self.lock:
            record = self.jobs.get(job_id)
            if record is None or record.state is not JobState.RUNNING:
                return
            self.last_progress[job_id] = time.time()
            kind = event.get("kind")
            if kind == "step":
                seen = float(event.get("tokens_seen", 0))
                delta = seen - self.tokens_reported.get(job_id, 0.0)
                self.tokens_reported[job_id] = seen
                self.metrics.step(record.tenant, job_id, event, delta if delta > 0 else seen)
                record.progress = {k: event[k] for k in ("step", "total_steps", "loss", "lr", "tokens_per_s",
                                                         "step_time_s", "tokens_seen", "eval_loss",
                                                         "gpu_memory_bytes", "mfu") if k in event}
                self._log(job_id, "step {step}/{total_steps} loss {loss:.4f} {tokens_per_s:.0f} tok/s".format(**event)
                          + (f" eval {event['eval_loss']:.4f}" if "eval_loss" in event else ""))
            elif kind == "phase":
                self._log(job_id, event["phase"])
            elif kind == "data":
                self._log(job_id, f"data: {event['stats']}" + (" (cache hit)" if event.get("cache_hit") else ""))
            elif kind == "error":
                retry = " — Ray Train restarts the workers from the latest checkpoint" if event.get("retryable") else ""
                record.note(EventKind.FAILURE, event.get("reason", "") + retry)
                self._log(job_id, f"worker error: {event.get('reason')}{retry}")
                if event.get("retryable"):
                    self.metrics.worker_failures.labels(record.tenant).inc()
            elif kind == "attempt":
                self.group_starts[job_id] = self.group_starts.get(job_id, 0) + 1
                if event.get("placement_group"):
                    record.placement_groups.append(event["placement_group"])
                if self.group_starts[job_id] > 1:
                    record.note(EventKind.FAILURE, f"worker group restarted after a failure (start "
                                f"{self.group_starts[job_id]} of this run, {event.get('world_size')} workers)")
                self.records.save(record)  # a new scheduler must find the placement groups
            elif kind == "resumed":
                record.note(EventKind.RESUMED, f"resumed from checkpoint step {event['step']} on "
                            f"{event.get('world_size')} worker(s)", {"step": event["step"]})
                self._log(job_id, f"resumed from checkpoint step {event['step']}")
            elif kind == "checkpoint":
                record.last_checkpoint_step = event["step"]
                self.metrics.checkpoint_seconds.labels(record.tenant).observe(event.get("seconds", 0.0))
                self.metrics.checkpoint_bytes.labels(record.tenant).inc(event.get("bytes", 0))
                self._log(job_id, f"checkpoint at step {event['step']} ({event.get('bytes', 0)} bytes, "
                          f"{event.get('seconds', 0.0):.2f} s)")
            elif kind == "preempted":
                self._log(job_id, f"preempted after step {event.get('step')}: checkpoint saved")

    def ping(self) -> dict[str, Any]:
        with self.lock:
            return {"jobs": len(self.jobs), "running": len(self.runners), "store": self.store.root}

    # ---------------------------------------------------------------- loop
    def tick(self) -> None:
        """Reap finished runners, fail hung ones, admit what the policy says, update gauges."""
        self._reap()
        self._admit()
        self._account()

    def _account(self) -> None:
        """Chargeback (resource-seconds held by running jobs) and the per-tenant gauges."""
        now = time.time()
        with self.lock:
            dt, self.last_tick = now - self.last_tick, now
            counts: dict[tuple[str, str], int] = collections.Counter(
                (j.tenant, j.state.value) for j in self.jobs.values())
            tenants = {j.tenant for j in self.jobs.values()} | set(self.tenants.tenant_names())
            self.metrics.set_job_counts(counts, tenants)
            oldest = {t: 0.0 for t in tenants}
            for j in self.jobs.values():
                if j.state is JobState.QUEUED:
                    oldest[j.tenant] = max(oldest[j.tenant], now - j.submitted_at)
            for tenant, age in oldest.items():
                self.metrics.oldest_queued.labels(tenant).set(age)
            usage: dict[str, dict[str, float]] = {t: {"workers": 0.0, "cpus": 0.0, "gpus": 0.0} for t in tenants}
            for j in self.jobs.values():
                if j.state is JobState.RUNNING:
                    u = usage[j.tenant]
                    u["workers"] += j.workers
                    u["cpus"] += j.workers * j.cpus_per_worker
                    u["gpus"] += j.workers * j.gpus_per_worker
            for tenant, u in usage.items():
                if u["gpus"]:
                    self.metrics.gpu_seconds.labels(tenant).inc(u["gpus"] * dt)
                if u["cpus"]:
                    self.metrics.cpu_seconds.labels(tenant).inc(u["cpus"] * dt)
                for resource, value in u.items():
                    self.metrics.usage.labels(tenant, resource).set(value)
                for resource, value in self.tenants.quota_dict(tenant).items():
                    if isinstance(value, int | float) and resource in u:
                        self.metrics.quota.labels(tenant, resource).set(value)

    def _reap(self) -> None:
        with self.lock:
            items = list(self.runners.items())
        for job_id, (actor, ref) in items:
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the runner died (crash, OOM, killed)
                    outcome = {"state": "FAILED", "reason": f"runner died: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                self._finish(job_id, outcome)
            elif time.time() - self.last_progress.get(job_id, time.time()) > self.hang_timeout_s:
                ray.kill(actor, no_restart=True)
                self._finish(job_id, {"state": "FAILED",
                                      "reason": f"no progress for {self.hang_timeout_s:.0f} s — the job hung and was stopped"})

    def _finish(self, job_id: str, outcome: dict[str, Any]) -> None:
        with self.lock:
            self.runners.pop(job_id, None)
            record = self.jobs[job_id]
            self.preempting.discard(job_id)
            self.group_starts.pop(job_id, None)
            self._release(record)  # however the run ended: its workers' resources free now
            if record.state.is_terminal():
                return  # cancelled meanwhile: terminal states never change
            if outcome["state"] == "PREEMPTED":
                record.last_checkpoint_step = outcome.get("step")
                record.progress = {}
                record.transition(JobState.QUEUED, EventKind.PREEMPTED,
                                  f"preempted: checkpoint at step {outcome.get('step')}; re-queued, resumes from it",
                                  )
                self.metrics.preemptions.labels(record.tenant).inc()
                self.metrics.drop_job(job_id)
                self._log(job_id, f"preempted at step {outcome.get('step')}; re-queued")
                self._persist(record)
                return
            state = JobState(outcome["state"])
            record.reason = outcome.get("reason")
            record.adapter_uri = outcome.get("adapter_uri")
            record.metrics = outcome.get("metrics") or {}
            record.transition(state, message=record.reason or f"adapter at {record.adapter_uri}")
            duration = (record.ended_at - record.started_at) if record.started_at and record.ended_at else None
            self.metrics.job_ended(record.tenant, job_id, state.value.lower(), duration,
                                   int(outcome.get("adapter_bytes") or 0))
            self.tokens_reported.pop(job_id, None)
            self._log(job_id, f"{state.value.lower()}" + (f": {record.reason}" if record.reason else ""))
            self._persist(record)

    def _admit(self) -> None:
        from ..policy import decide

        with self.lock:
            queued = [j for j in self.jobs.values() if j.state is JobState.QUEUED]
            if not queued:
                return
            running = [j for j in self.jobs.values() if j.state is JobState.RUNNING]
            now = time.time()
            t0 = time.perf_counter()
            decision = decide(
                [self._request_from(j) for j in queued],
                [self._running_from(j) for j in running],
                self._cluster(running),
                self.tenants,
                now,
            )
            self.metrics.decisions.inc()
            self.metrics.decision_seconds.observe(time.perf_counter() - t0)
            for job_id in decision.start:
                self._start(self.jobs[job_id])
            if decision.preempt and not self.preempting:  # one preemption at a time: victims free first
                for job_id in decision.preempt:
                    self._preempt(self.jobs[job_id], decision.preempt_for)

    def _preempt(self, record: JobRecord, for_job: str | None) -> None:
        """Ask a running job to checkpoint and stop; its runner then returns PREEMPTED."""
        runner = self.runners.get(record.job_id)
        if runner is None:
            return
        self.preempting.add(record.job_id)
        runner[0].preempt.remote()
        record.note(EventKind.PREEMPTING, f"preempting for higher-priority job {for_job}: checkpoint, then re-queue")
        self._log(record.job_id, f"preempting for {for_job}")
        self.records.save(record)

    def _start(self, record: JobRecord) -> None:
        from .runner import Runner

        runner = Runner.options(name=RUNNER_PREFIX + record.job_id, namespace=NAMESPACE).remote()
        ref = runner.run.remote(record.spec, self.store.root, record.job_id, self.self_handle)
        self.runners[record.job_id] = (runner, ref)
        self.group_starts[record.job_id] = 0
        record.placement_groups = []
        self.last_progress[record.job_id] = time.time()
        record.attempts += 1
        self.metrics.queue_wait.labels(record.tenant).observe(max(0.0, time.time() - record.submitted_at))
        record.transition(JobState.RUNNING, EventKind.STARTED,
                          f"started with {record.workers} worker(s) (attempt {record.attempts})")
        self._log(record.job_id, f"started: {record.workers} worker(s)")
        self.records.save(record)

    # ---------------------------------------------------------------- helpers
    def _get(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            from ..errors import LorafarmError

            raise LorafarmError(f"job {job_id!r} not found — list jobs with `lorafarm list`")
        return record

    def _log(self, job_id: str, line: str) -> None:
        self.logs.setdefault(job_id, collections.deque(maxlen=LOG_LINES)).append(
            f"{time.strftime('%H:%M:%S')} {line}")

    def _persist(self, record: JobRecord) -> None:
        self.records.save(record)
        lines = "\n".join(self.logs.get(record.job_id, [])) + "\n"
        try:
            write_bytes(join(self.store.job_uri(record.tenant, record.job_id), "log.txt"), lines.encode())
        except Exception:  # noqa: BLE001 - the log copy is a convenience
            pass

    def _trust_problems(self, spec) -> list[str]:
        problems = []
        if spec.trust_remote_code and not self.tenants.allows_remote_code(spec.tenant):
            problems.append(f"trust_remote_code: not allowed for tenant {spec.tenant!r} — remove it, or ask the "
                            "operator to set allow_trust_remote_code in the tenants file")
        # a tenant reads only under its own store prefix
        prefix = self.store.root.rstrip("/") + "/"
        own = self.store.root.rstrip("/") + f"/{spec.tenant}/"
        for field, uri in (("dataset.uri", spec.dataset.uri), ("dataset.eval_uri", spec.dataset.eval_uri),
                           ("base_model", spec.base_model)):
            if uri and uri.startswith(prefix) and not uri.startswith(own):
                problems.append(f"{field}: {uri} is under another tenant's store prefix — tenants read only "
                                f"under {own}")
        return problems

    def _request(self, spec, job_id: str, priority: str, submitted_at: float):
        from ..policy import JobRequest

        r = spec.resources
        return JobRequest(job_id=job_id, tenant=spec.tenant, workers=r.workers, cpus_per_worker=r.cpus_per_worker,
                          gpus_per_worker=r.gpus_per_worker, priority=priority, submitted_at=submitted_at)

    def _request_from(self, j: JobRecord):
        from ..policy import JobRequest

        return JobRequest(job_id=j.job_id, tenant=j.tenant, workers=j.workers, cpus_per_worker=j.cpus_per_worker,
                          gpus_per_worker=j.gpus_per_worker, priority=j.priority, submitted_at=j.submitted_at)

    def _running_from(self, j: JobRecord):
        from ..policy import RunningJob

        return RunningJob(job_id=j.job_id, tenant=j.tenant, workers=j.workers, cpus_per_worker=j.cpus_per_worker,
                          gpus_per_worker=j.gpus_per_worker, priority=j.priority, submitted_at=j.submitted_at,
                          started_at=j.started_at or time.time())

    def _capacity(self) -> dict[str, float]:
        total = ray.cluster_resources()
        return {"cpus": max(0.0, total.get("CPU", 0.0) - self.reserve_cpus), "gpus": total.get("GPU", 0.0)}

    def _cluster(self, running: list[JobRecord]):
        from ..policy import ClusterState

        cap = self._capacity()
        used_cpu = sum(j.workers * j.cpus_per_worker for j in running)
        used_gpu = sum(j.workers * j.gpus_per_worker for j in running)
        return ClusterState(total_cpus=cap["cpus"], total_gpus=cap["gpus"],
                            free_cpus=cap["cpus"] - used_cpu, free_gpus=cap["gpus"] - used_gpu)


@ray.remote(num_cpus=0, max_concurrency=64, max_restarts=0)
class Scheduler:
    """The actor shell around :class:`SchedulerCore`: a background admission loop plus the API."""

    def __init__(self, store_uri: str, tenants_text: str | None = None, metrics_port: int | None = None,
                 hang_timeout_s: float = 1800.0, reserve_cpus: float = 0.0):
        handle = ray.get_runtime_context().current_actor
        self.core = SchedulerCore(store_uri, tenants_text, hang_timeout_s, reserve_cpus, self_handle=handle)
        self.metrics_port = metrics_port
        if metrics_port is not None:
            self.core.metrics.serve(metrics_port)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="lorafarm-admission", daemon=True)
        self._loop.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.core.tick()
            except Exception as e:  # noqa: BLE001 - the loop must survive any one bad tick
                print(f"lorafarm scheduler: tick failed: {type(e).__name__}: {e}", flush=True)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.core.submit(spec)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.core.status(job_id)

    def list(self, tenant: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return self.core.list(tenant, state)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.core.events(job_id)

    def logs(self, job_id: str, offset: int = 0):
        return self.core.logs_since(job_id, offset)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.core.cancel(job_id)

    def tenants(self) -> list[dict[str, Any]]:
        return self.core.tenants_usage()

    def report(self, job_id: str, event: dict[str, Any]) -> None:
        self.core.report(job_id, event)

    def ping(self) -> dict[str, Any]:
        return self.core.ping()
