"""Node loss and return on a simulated per-node GPU cluster, with rigid and elastic jobs: what
``resources.min_workers`` buys when nodes fail.

A time-stepped model (one step = ``dt`` seconds), kept apart from the trace simulator in
:mod:`lorafarm.sim.engine` so the two evolve independently; placement and the elastic size use
the scheduler's own code (:class:`~lorafarm.policy.pool.Pool`, :func:`largest_fit`).

- Nodes fail independently (exponential, ``node_mtbf_s``) and come back after ``repair_s``.
- A job has ``work`` worker-seconds to do at ``workers`` workers (scaling is linear, the global
  batch is the same at any size) and checkpoints every ``checkpoint_s`` of its own run time;
  a node loss rolls it back to its last checkpoint and costs ``restart_s`` before it trains again.
- Rigid jobs that lose a node go back to the queue (in submission order, so first in line);
  elastic ones restart at the largest size that fits in ``[min_workers, workers]`` and grow
  back to ``workers`` at their next checkpoint when the nodes are there and nobody waits.
- Admission is first come, first served with backfill, whole gangs on whole nodes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..policy import ClusterState, NodeState
from ..policy.pool import Pool, largest_fit


@dataclass
class SimJob:
    job_id: str
    submitted: float
    workers: int
    min_workers: int
    work: float  # worker-seconds of training at any size
    done: float = 0.0  # worker-seconds trained, kept at checkpoints
    since_ckpt: float = 0.0  # worker-seconds since the last checkpoint (lost with a node)
    run_s_since_ckpt: float = 0.0
    size: int = 0
    placement: dict[str, int] = field(default_factory=dict)
    restart_left: float = 0.0
    ended: float | None = None
    lost_at: float | None = None  # when it last lost a node, until it trains again
    recoveries: list[float] = field(default_factory=list)  # node loss -> training again, seconds
    resizes: int = 0


@dataclass(frozen=True)
class FailureModel:
    nodes: int = 125
    gpus_per_node: int = 8
    node_mtbf_s: float = 30 * 86400.0  # one failure per node per 30 days: ~4 a day on 125 nodes
    repair_s: float = 4 * 3600.0
    checkpoint_s: float = 1800.0
    restart_s: float = 180.0
    dt: float = 60.0


def make_trace(n_jobs: int, seed: int, model: FailureModel, load: float = 0.9,
               elastic: bool = False) -> list[SimJob]:
    """Jobs of 1–64 one-GPU workers (more small ones), 1–24 h at full size, arriving at a rate
    that offers ``load`` of the cluster's GPUs; elastic ones may shrink to half their size."""
    rng = random.Random(seed)
    pairs = [(s, w) for s, w in zip([1, 2, 4, 8, 16, 32, 64], [20, 15, 15, 20, 15, 10, 5], strict=True)
             if s <= model.nodes * model.gpus_per_node // 2]  # every gang fits with half the nodes down
    sizes, weights = [s for s, _ in pairs], [w for _, w in pairs]
    jobs, t = [], 0.0
    mean_work = sum(s * w for s, w in zip(sizes, weights, strict=True)) / sum(weights) * 8 * 3600
    rate = load * model.nodes * model.gpus_per_node / mean_work  # arrivals per second
    for i in range(n_jobs):
        t += rng.expovariate(rate)
        w = rng.choices(sizes, weights)[0]
        hours = min(24.0, max(1.0, rng.lognormvariate(math.log(6), 0.8)))
        jobs.append(SimJob(f"j{i}", t, w, max(1, w // 2) if elastic else w, w * hours * 3600))
    return jobs


def simulate(jobs: list[SimJob], model: FailureModel, seed: int = 0, horizon_s: float | None = None) -> dict:
    """Run to the last job's end (or ``horizon_s``); averages over the run."""
    rng = random.Random(seed + 1)
    names = [f"n{i}" for i in range(model.nodes)]
    down_until: dict[str, float] = {}
    next_fail = {n: rng.expovariate(1 / model.node_mtbf_s) for n in names}
    pending = sorted(jobs, key=lambda j: j.submitted)
    queue: list[SimJob] = []
    running: list[SimJob] = []
    t, busy_gpu_s, failures = 0.0, 0.0, 0
    end = horizon_s or 365 * 86400.0  # a bound, in case a gang could never fit
    while (pending or queue or running) and t < end:
        # nodes fail and return
        for n in names:
            if n in down_until and down_until[n] <= t:
                del down_until[n]
                next_fail[n] = t + rng.expovariate(1 / model.node_mtbf_s)
            elif n not in down_until and next_fail[n] <= t:
                down_until[n] = t + model.repair_s
                failures += 1
                for job in [j for j in running if n in j.placement]:
                    _lose_node(job, t, queue, running, model, names, down_until)
        while pending and pending[0].submitted <= t:
            queue.append(pending.pop(0))
        queue.sort(key=lambda j: j.submitted)
        _admit(queue, running, model, names, down_until, t)
        # train one step
        for job in list(running):
            busy_gpu_s += job.size * model.dt
            if job.restart_left > 0:
                job.restart_left -= model.dt
                continue
            if job.lost_at is not None:
                job.recoveries.append(t - job.lost_at)
                job.lost_at = None
            step = min(job.size * model.dt, job.work - job.done - job.since_ckpt)
            job.since_ckpt += step
            job.run_s_since_ckpt += model.dt
            if job.done + job.since_ckpt >= job.work - 1e-6:
                job.ended, job.done, job.since_ckpt = t + model.dt, job.work, 0.0
                running.remove(job)
            elif job.run_s_since_ckpt >= model.checkpoint_s:
                job.done += job.since_ckpt
                job.since_ckpt = job.run_s_since_ckpt = 0.0
                if job.size < job.workers and not queue:
                    _grow(job, running, model, names, down_until)
        t += model.dt
    ended = [j for j in jobs if j.ended is not None]
    recoveries = sorted(r for j in jobs for r in j.recoveries)
    capacity = model.nodes * model.gpus_per_node * t
    return {
        "jobs": len(jobs), "finished": len(ended), "node_failures": failures, "makespan_h": t / 3600,
        "avg_jct_h": sum(j.ended - j.submitted for j in ended) / max(1, len(ended)) / 3600,
        # busy: GPUs held; useful: the finished jobs' training (work redone after a loss counts once)
        "gpu_busy": busy_gpu_s / capacity, "gpu_useful": sum(j.work for j in ended) / capacity,
        "recoveries": len(recoveries), "resizes": sum(j.resizes for j in jobs),
        "recovery_p50_min": _q(recoveries, 0.5) / 60, "recovery_p95_min": _q(recoveries, 0.95) / 60,
    }


def _q(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def _cluster(running: list[SimJob], model: FailureModel, names: list[str], down: dict[str, float],
             without: SimJob | None = None) -> ClusterState:
    held: dict[str, int] = {}
    for j in running:
        if j is not without:
            for n, k in j.placement.items():
                held[n] = held.get(n, 0) + k
    g = model.gpus_per_node
    return ClusterState.from_nodes([NodeState(n, g, g, g - held.get(n, 0), g - held.get(n, 0))
                                    for n in names if n not in down])


def _start(job: SimJob, size: int, placement, running: list[SimJob], model: FailureModel, t: float) -> None:
    job.size, job.placement = size, dict(placement)
    job.restart_left = model.restart_s
    if job not in running:
        running.append(job)


def _admit(queue, running, model, names, down, t) -> None:
    pool = Pool(_cluster(running, model, names, down))
    blocked = False
    for job in list(queue):
        placement = pool.place(job.workers, 1, 1)
        if placement is None:
            if not blocked:  # the head: hold what it could use on each node, backfill around it
                pool.reserve(job.workers, 1, 1)
                blocked = True
            continue
        pool.take(job.workers, 1, 1, placement)
        queue.remove(job)
        _start(job, job.workers, placement, running, model, t)


def _lose_node(job: SimJob, t, queue, running, model, names, down) -> None:
    job.since_ckpt = job.run_s_since_ckpt = 0.0  # back to the last checkpoint
    if job.lost_at is None:
        job.lost_at = t
    fit = largest_fit(Pool(_cluster(running, model, names, down, without=job)), job.min_workers, job.workers, 1, 1)
    if fit is None:
        running.remove(job)
        job.size, job.placement = 0, {}
        queue.append(job)
        return
    if fit[0] != job.size:
        job.resizes += 1
    _start(job, fit[0], fit[1], running, model, t)


def _grow(job: SimJob, running, model, names, down) -> None:
    fit = largest_fit(Pool(_cluster(running, model, names, down, without=job)), job.size + 1, job.workers, 1, 1)
    if fit is not None:
        job.resizes += 1
        job.size, job.placement, job.restart_left = fit[0], dict(fit[1]), model.restart_s
