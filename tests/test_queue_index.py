"""QueueIndex makes exactly ``decide``'s decision, call after call, while jobs come and go and
time crosses aging hours and lift times: random workloads, compared decision by decision."""

from __future__ import annotations

import random

import pytest

from lorafarm.policy import ClusterState, JobRequest, NodeState, RunningJob, decide
from lorafarm.policy.decide import HOUR, queue_key, rank
from lorafarm.policy.queue import QueueIndex
from lorafarm.tenants import load_tenants

CONFIGS = {
    "aging+backfill": """
priority_classes: {low: 0, normal: 100, high: 1000}
policy: {aging_per_hour: 100, backfill: true}
tenants:
  default: {weight: 1}
  a: {weight: 2, quota: {gpus: 8, workers: 8}}
  b: {weight: 1, quota: {gpus: 12}}
  c: {weight: 1}
""",
    "slow-aging+preemption": """
priority_classes: {low: 0, normal: 100, high: 1000}
policy: {aging_per_hour: 30, backfill: true, preemption: true}
tenants:
  default: {weight: 1}
  a: {weight: 3}
  b: {weight: 1, quota: {gpus: 6}}
""",
    "no-aging-no-backfill": """
policy: {aging_per_hour: 0, backfill: false}
tenants:
  default: {weight: 1}
  a: {weight: 1}
""",
}


def random_job(rng: random.Random, i: int, now: float, tenants: list[str]) -> JobRequest:
    workers, gpus = rng.choice([(1, 0.0), (1, 1.0), (1, 2.0), (2, 1.0), (2, 4.0), (4, 2.0), (8, 1.0)])
    return JobRequest(f"j{i:05d}", rng.choice(tenants), workers, rng.choice([1.0, 2.0, 4.0]), gpus,
                      rng.choice(["low", "normal", "normal", "high"]), now - rng.uniform(0, 8 * HOUR),
                      rng.choice([None, rng.uniform(60, 12 * HOUR), 600.0]), spread=rng.random() < 0.1)


def random_cluster(rng: random.Random, running: list[RunningJob]) -> ClusterState:
    if rng.random() < 0.5:
        total, used = 32.0, sum(r.gpus for r in running)
        cpus_used = sum(r.cpus for r in running)
        return ClusterState(256.0, total, max(0.0, 256.0 - cpus_used), max(0.0, total - used))
    return ClusterState.from_nodes([NodeState(f"n{k}", 64.0, 8.0, 64.0 * rng.random(), float(rng.randint(0, 8)))
                                    for k in range(4)])


def expected_keys(jobs, tenants, now) -> dict[str, tuple]:
    """Every job's key as ``decide`` computes it at ``now``."""
    levels = sorted(set(tenants.priority_classes.values()))
    out = {}
    for j in jobs:
        value = rank(j, tenants, now)
        band = max(level for level in levels if level <= value)
        out[j.job_id] = queue_key(j, band, levels[-1], now)
    return out


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_the_index_decides_exactly_as_decide_call_after_call(config, seed):
    tenants = load_tenants(CONFIGS[config])
    names = ["a", "b", "c", "d"]
    rng = random.Random(seed)
    now = 10 * HOUR
    index = QueueIndex(tenants)
    queued: dict[str, JobRequest] = {}
    running: list[RunningJob] = []
    n = 0
    for call in range(60):
        for _ in range(rng.randint(0, 25)):  # arrivals (some re-put: estimate changed)
            if queued and rng.random() < 0.15:
                old = queued[rng.choice(sorted(queued))]
                j = JobRequest(old.job_id, old.tenant, old.workers, old.cpus_per_worker, old.gpus_per_worker,
                               old.priority, old.submitted_at, rng.uniform(60, 6 * HOUR), old.spread)
            else:
                n += 1
                j = random_job(rng, n, now, names)
            queued[j.job_id] = j
            index.put(j)
        for job_id in rng.sample(sorted(queued), k=min(len(queued), rng.randint(0, 3))):  # cancellations
            del queued[job_id]
            index.remove(job_id)
        if running and rng.random() < 0.5:
            running.pop(rng.randrange(len(running)))
        cluster = random_cluster(rng, running)
        expected = decide(list(queued.values()), running, cluster, tenants, now)
        got = index.decide(running, cluster, now)
        assert got == expected, f"call {call} at {now / HOUR:.3f} h"
        assert index.keys(now) == expected_keys(queued.values(), tenants, now), f"call {call}"
        assert sorted(j.job_id for j in index.jobs()) == sorted(queued) and len(index) == len(queued)
        for job_id in expected.start:  # what started leaves the queue, as the scheduler does
            j = queued.pop(job_id)
            index.remove(job_id)
            running.append(RunningJob(j.job_id, j.tenant, j.workers, j.cpus_per_worker, j.gpus_per_worker,
                                      j.priority, j.submitted_at, now, j.estimated_duration))
        # time moves: small steps, whole hours (aging) and exactly onto boundaries (lift, aging)
        step = rng.choice([0.0, 1.0, 61.0, HOUR, 2.5 * HOUR])
        if queued and rng.random() < 0.3:
            j = queued[rng.choice(sorted(queued))]
            step = max(0.0, j.submitted_at + rng.choice([1, 2, 3]) * HOUR - now)
        now += step


def test_a_tick_considers_few_jobs_and_the_queue_is_unchanged_by_deciding():
    tenants = load_tenants(CONFIGS["aging+backfill"])
    rng = random.Random(7)
    index = QueueIndex(tenants)
    jobs = [random_job(rng, i, 20 * HOUR, ["a", "b", "c", "d"]) for i in range(5000)]
    for j in jobs:
        index.put(j)
    cluster = ClusterState(256.0, 32.0, 4.0, 1.0)  # busy: one GPU free
    first = index.decide([], cluster, 20 * HOUR)
    assert first == decide(jobs, [], cluster, tenants, 20 * HOUR)
    assert first.considered < 100  # a busy cluster looks at a handful of jobs, not the 5,000
    assert index.decide([], cluster, 20 * HOUR) == first and len(index) == 5000
