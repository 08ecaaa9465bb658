"""The discrete-event simulator: a simulated clock, a cluster, and any policy with
:func:`lorafarm.policy.decide`'s signature.

It does what the scheduler's admission loop does, at event times instead of every 0.25 s:
on every submit and finish it passes the queued jobs, the running jobs, the free resources,
the tenants config and the (simulated) clock to the policy, then starts what the policy says,
as whole gangs, on the nodes the policy placed them. Between events nothing frees up, so a
call at a finer tick could only differ when a job's aged rank crosses a whole hour; pass
``tick_s`` to call the policy that often as well while jobs wait.

Submissions go through the scheduler's own rules, :func:`lorafarm.policy.submission_problems`:
a job whose tenant is refused, whose priority is not allowed, that can never fit or whose tenant
already has ``max_queued`` queued jobs is rejected with the scheduler's reasons and does not run.

The simulator trusts no policy: it checks every start against the free resources (a start that
does not fit is refused and counted as a capacity violation) and every tenant's usage against
its quota at each start (:func:`lorafarm.policy.within_quota`; counted as a quota violation).
``estimates`` says what each queued job carries as ``estimated_duration`` (:mod:`.estimates`):
``"estimator"``, what the live scheduler's estimator would say (learned per shape from the jobs
that finished, as the scheduler learns); ``True``/``"oracle"``, its true remaining duration (the
bar no scheduler reaches); ``False``/``"none"``, nothing. A preempted job goes back to the
queue with its original submission time and resumes from its last checkpoint (its remaining
work), as a LoRA job does.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..policy import (
    ClusterState,
    JobRequest,
    NodeState,
    RunningJob,
    Usage,
    decide,
    job_priority,
    submission_problems,
    within_quota,
)
from ..policy.baselines import Policy
from ..policy.pool import EPS
from ..policy.queue import QueueIndex
from ..spec.tenants import TenantsConfig
from .estimates import SimEstimates
from .trace import SimJob

FINISH, SUBMIT, TICK = 0, 1, 2  # at one instant: finishes free resources before submits queue


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """``gpus`` GPUs and ``cpus`` CPUs, split evenly over ``nodes`` nodes (None = one pool)."""

    gpus: float
    cpus: float | None = None  # default: 8 CPUs per GPU (never the binding resource)
    nodes: int | None = None

    @property
    def total_cpus(self) -> float:
        return self.cpus if self.cpus is not None else 8.0 * self.gpus


@dataclass(slots=True)
class JobOutcome:
    job: SimJob
    start: float | None = None  # first start
    end: float | None = None
    rejected: str | None = None
    preempted: int = 0


@dataclass(slots=True)
class SimResult:
    """Everything :mod:`lorafarm.sim.report` needs: per-job outcomes and integrals over time."""

    policy: str
    cluster: ClusterSpec
    tenants: TenantsConfig
    outcomes: dict[str, JobOutcome]
    makespan: float = 0.0
    decide_calls: int = 0
    considered: int = 0
    busy_gpu_s: float = 0.0
    queued_s: float = 0.0  # time with at least one job queued
    busy_while_queued_gpu_s: float = 0.0
    runnable_s: float = 0.0  # time with a queued job its tenant's quota would let start
    busy_while_runnable_gpu_s: float = 0.0
    tenant_gpu_s: dict[str, float] = field(default_factory=dict)  # A_i: GPU-seconds held
    tenant_entitled_gpu_s: dict[str, float] = field(default_factory=dict)  # E_i: fair GPU-seconds
    quota_violations: int = 0
    capacity_violations: int = 0
    preemptions: int = 0
    max_queue: int = 0
    event_times_monotone: bool = True
    series: list[tuple[float, float, int]] = field(default_factory=list)  # (time, busy GPUs, queued jobs)
    tenant_series: list[tuple[float, str, float]] = field(default_factory=list)  # (time, tenant, GPU delta)


def fair_split(capacity: float, demand: dict[str, float], weight: dict[str, float]) -> dict[str, float]:
    """Weighted max-min fair split of ``capacity`` among ``demand`` (water-filling)."""
    out: dict[str, float] = {}
    order = sorted(demand, key=lambda t: (demand[t] / weight[t], t))
    left, wsum = capacity, sum(weight[t] for t in order)
    for i, t in enumerate(order):
        fair = left * weight[t] / wsum if wsum > 0 else 0.0
        if demand[t] <= fair:
            out[t] = demand[t]
            left -= demand[t]
            wsum -= weight[t]
        else:
            for u in order[i:]:
                out[u] = left * weight[u] / wsum
            break
    return out


class Simulator:
    """One run of one policy over one trace (call :meth:`run`)."""

    def __init__(self, jobs: Sequence[SimJob], cluster: ClusterSpec, tenants: TenantsConfig, policy: Policy,
                 policy_name: str = "lorafarm", tick_s: float | None = None, record_series: bool = True,
                 estimates: bool | str = True):
        self.jobs = list(jobs)
        self.cluster = cluster
        self.tenants = tenants
        self.policy = policy
        self.tick_s = tick_s
        self.record = record_series
        self.estimates = SimEstimates(estimates, self.jobs)  # what each job's estimated_duration is
        self.result = SimResult(policy_name, cluster, tenants, {j.job_id: JobOutcome(j) for j in self.jobs})
        if len(self.result.outcomes) != len(self.jobs):
            raise ValueError("job ids in the trace must be unique")
        total_cpus = cluster.total_cpus
        self.free_gpus, self.free_cpus = float(cluster.gpus), float(total_cpus)
        if cluster.nodes:
            k = cluster.nodes
            self.node_names = [f"node-{i:04d}" for i in range(k)]
            self.node_index = {n: i for i, n in enumerate(self.node_names)}
            self.node_cap = (cluster.gpus / k, total_cpus / k)
            self.node_gpus = [cluster.gpus / k] * k
            self.node_cpus = [total_cpus / k] * k
        else:
            self.node_names = None
        self.capacity = self._state()
        self.queued: dict[str, JobRequest] = {}
        # lorafarm's own policy keeps its queue in order between calls, as the scheduler does
        # (QueueIndex: exactly decide's decision, without ranking the whole queue every call)
        self.index = QueueIndex(tenants) if policy is decide else None
        self.running: dict[str, RunningJob] = {}
        self.ends: dict[str, float] = {}
        self.remaining: dict[str, float] = {j.job_id: j.duration for j in self.jobs}
        self.by_id = {j.job_id: j for j in self.jobs}
        self.usage: dict[str, Usage] = {}
        self.queued_count: Counter[str] = Counter()
        self.queued_gpus: dict[str, float] = {}
        self.queued_shapes: dict[str, Counter] = {}  # tenant -> Counter of (workers, cpus, gpus)
        self.weights: dict[str, float] = {}
        self.quota_gpus: dict[str, float] = {}
        self.now = 0.0

    # ------------------------------------------------------------------ state
    def _state(self) -> ClusterState:
        c = self.cluster
        if self.node_names is None:
            return ClusterState(c.total_cpus, float(c.gpus), self.free_cpus, self.free_gpus)
        cap_g, cap_c = self.node_cap
        nodes = tuple(NodeState(n, cap_c, cap_g, self.node_cpus[i], self.node_gpus[i])
                      for i, n in enumerate(self.node_names))
        return ClusterState(c.total_cpus, float(c.gpus), self.free_cpus, self.free_gpus, nodes)

    def _tenant(self, name: str) -> None:
        if name not in self.weights:
            self.weights[name] = self.tenants.weight(name)
            q = self.tenants.quota(name).gpus
            self.quota_gpus[name] = float(self.cluster.gpus) if q is None else min(float(q), self.cluster.gpus)
            self.usage[name] = Usage()
            self.queued_gpus[name] = 0.0
            self.queued_shapes[name] = Counter()
            self.result.tenant_gpu_s.setdefault(name, 0.0)
            self.result.tenant_entitled_gpu_s.setdefault(name, 0.0)

    # ------------------------------------------------------------------ events
    def run(self) -> SimResult:
        events: list[tuple[float, int, int, str]] = []
        for seq, j in enumerate(self.jobs):
            events.append((j.submit_time, SUBMIT, seq, j.job_id))
        heapq.heapify(events)
        seq = len(self.jobs)
        res = self.result
        last = 0.0
        tick_pending = False
        while events:
            t = events[0][0]
            if t < last:
                res.event_times_monotone = False
            self._integrate(last, t)
            last = self.now = t
            changed = False
            while events and events[0][0] == t:
                _, kind, _, job_id = heapq.heappop(events)
                if kind == FINISH:
                    if self.ends.get(job_id) == t:  # not a stale finish of a preempted run
                        self._finish(job_id)
                        changed = True
                elif kind == SUBMIT:
                    changed |= self._submit(job_id)
                else:
                    tick_pending = False
                    changed = True
            if not changed or not self.queued:
                continue
            for _ in range(8):  # a preemption frees resources: decide again at once
                preempted = self._decide(t, events, seq)
                seq += len(self.queued) + 1
                if not preempted or not self.queued:
                    break
            if self.tick_s and self.queued and not tick_pending:
                heapq.heappush(events, (t + self.tick_s, TICK, seq, ""))
                seq += 1
                tick_pending = True
        res.makespan = last
        return res

    def _submit(self, job_id: str) -> bool:
        out = self.result.outcomes[job_id]
        j = out.job
        req = JobRequest(j.job_id, j.tenant, j.workers, j.cpus_per_worker, j.gpus_per_worker,
                         job_priority(self.tenants, j.tenant, j.priority), j.submit_time,
                         self.estimates.estimate(j, self.remaining[job_id]))
        problems = submission_problems(req, self.tenants, self.capacity, self.queued_count)
        if problems:
            out.rejected = "; ".join(problems)
            return False
        self._tenant(j.tenant)
        self._enqueue(req)
        return True

    def _enqueue(self, req: JobRequest) -> None:
        self.queued[req.job_id] = req
        if self.index is not None:
            self.index.put(req, self.now)
        self.estimates.queued(self.by_id[req.job_id])
        self.queued_count[req.tenant] += 1
        self.queued_gpus[req.tenant] += req.gpus
        self.queued_shapes[req.tenant][(req.workers, req.cpus, req.gpus)] += 1
        self.result.max_queue = max(self.result.max_queue, len(self.queued))

    def _dequeue(self, job_id: str) -> JobRequest:
        req = self.queued.pop(job_id)
        if self.index is not None:
            self.index.remove(job_id)
        self.estimates.dequeued(self.by_id[job_id])
        self.queued_count[req.tenant] -= 1
        self.queued_gpus[req.tenant] -= req.gpus
        shapes = self.queued_shapes[req.tenant]
        shape = (req.workers, req.cpus, req.gpus)
        shapes[shape] -= 1
        if not shapes[shape]:
            del shapes[shape]
        return req

    def _decide(self, t: float, events: list, seq: int) -> bool:
        res = self.result
        for job_id in self.estimates.stale():  # their shape learned: the estimate the scheduler would pass now
            req = self.queued[job_id]
            self.queued[job_id] = req = replace(req, estimated_duration=self.estimates.estimate(
                self.by_id[job_id], self.remaining[job_id]))
            if self.index is not None:
                self.index.put(req, t)
        if self.index is not None:
            decision = self.index.decide(list(self.running.values()), self._state(), t)
        else:
            decision = self.policy(list(self.queued.values()), list(self.running.values()), self._state(),
                                   self.tenants, t)
        res.decide_calls += 1
        res.considered += decision.considered
        for job_id in decision.start:
            if job_id not in self.queued:
                res.capacity_violations += 1  # the policy started something not queued
                continue
            placement = decision.placements.get(job_id, ())
            if self._start(self.queued[job_id], placement, t):
                seq += 1
                heapq.heappush(events, (self.ends[job_id], FINISH, seq, job_id))
        for job_id in decision.preempt:
            if job_id in self.running:
                self._preempt(job_id, t)
        return bool(decision.preempt)

    def _fits(self, req: JobRequest, placement) -> bool:
        if req.gpus > self.free_gpus + EPS or req.cpus > self.free_cpus + EPS:
            return False
        if self.node_names is None:
            return True
        if sum(n for _, n in placement) != req.workers:
            return False  # a partial (or padded) gang
        for name, n in placement:
            i = self.node_index.get(name)
            if i is None or n * req.gpus_per_worker > self.node_gpus[i] + EPS \
                    or n * req.cpus_per_worker > self.node_cpus[i] + EPS:
                return False
        return True

    def _take(self, job: JobRequest | RunningJob, placement, sign: int) -> None:
        self.free_gpus -= sign * job.gpus
        self.free_cpus -= sign * job.cpus
        if self.node_names is not None:
            for name, n in placement:
                i = self.node_index[name]
                self.node_gpus[i] -= sign * n * job.gpus_per_worker
                self.node_cpus[i] -= sign * n * job.cpus_per_worker
        self.usage[job.tenant].add(job, sign)
        if self.record:
            self.result.tenant_series.append((self.now, job.tenant, sign * job.gpus))

    def _start(self, req: JobRequest, placement, t: float) -> bool:
        res = self.result
        if not self._fits(req, placement):
            res.capacity_violations += 1
            return False
        if not within_quota(req, self.usage[req.tenant], self.tenants):
            res.quota_violations += 1
        self._dequeue(req.job_id)
        self._take(req, placement, 1)
        self.running[req.job_id] = RunningJob(req.job_id, req.tenant, req.workers, req.cpus_per_worker,
                                              req.gpus_per_worker, req.priority, req.submitted_at, t,
                                              req.estimated_duration, tuple(placement))
        self.ends[req.job_id] = t + self.remaining[req.job_id]
        self.estimates.started(self.by_id[req.job_id], req.estimated_duration)
        out = res.outcomes[req.job_id]
        if out.start is None:
            out.start = t
        return True

    def _finish(self, job_id: str) -> None:
        job = self.running.pop(job_id)
        self._take(job, job.placement, -1)
        self.result.outcomes[job_id].end = self.ends.pop(job_id)
        self.estimates.finished(self.by_id[job_id])

    def _preempt(self, job_id: str, t: float) -> None:
        job = self.running.pop(job_id)
        self._take(job, job.placement, -1)
        self.remaining[job_id] = max(0.0, self.ends.pop(job_id) - t)
        self.result.outcomes[job_id].preempted += 1
        self.result.preemptions += 1
        self._enqueue(JobRequest(job.job_id, job.tenant, job.workers, job.cpus_per_worker, job.gpus_per_worker,
                                 job.priority, job.submitted_at,
                                 self.estimates.estimate(self.by_id[job_id], self.remaining[job_id])))

    # ------------------------------------------------------------------ accounting
    def _integrate(self, t0: float, t1: float) -> None:
        """Add the interval [t0, t1), over which nothing changed, to the time integrals."""
        res = self.result
        busy = self.cluster.gpus - self.free_gpus
        if self.record and (not res.series or res.series[-1][1:] != (busy, len(self.queued))):
            res.series.append((t0, busy, len(self.queued)))
        dt = t1 - t0
        if dt <= 0:
            return
        res.busy_gpu_s += busy * dt
        if not self.queued:
            for name, u in self.usage.items():
                if u.gpus:
                    res.tenant_gpu_s[name] += u.gpus * dt
                    res.tenant_entitled_gpu_s[name] += u.gpus * dt  # no contention: what it holds is fair
            return
        res.queued_s += dt
        res.busy_while_queued_gpu_s += busy * dt
        if self._runnable():
            res.runnable_s += dt
            res.busy_while_runnable_gpu_s += busy * dt
        demand: dict[str, float] = {}
        for name, u in self.usage.items():
            d = min(self.quota_gpus[name], u.gpus + self.queued_gpus[name])
            if d > EPS:
                demand[name] = d
            if u.gpus:
                res.tenant_gpu_s[name] += u.gpus * dt
        for name, e in fair_split(float(self.cluster.gpus), demand, self.weights).items():
            res.tenant_entitled_gpu_s[name] += e * dt

    def _runnable(self) -> bool:
        """Is some queued job within its tenant's quota headroom (so idle GPUs are the policy's doing)?"""
        for name, shapes in self.queued_shapes.items():
            quota, u = self.tenants.quota(name), self.usage[name]
            if any(not u.over(quota, workers, cpus, gpus) for workers, cpus, gpus in shapes):
                return True
        return False
