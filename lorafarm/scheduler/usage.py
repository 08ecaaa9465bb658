"""What tenants hold and are charged for, counted once: the ``lorafarm tenants`` view, the
chargeback counters (CPU/GPU-seconds held by running jobs) and the per-tenant gauges."""

from __future__ import annotations

import collections
from collections.abc import Collection

from ..metrics import Metrics
from ..policy import Usage
from ..spec import TenantsConfig
from .state import JobRecord, JobState


def held_by_tenant(jobs: Collection[JobRecord]) -> dict[str, Usage]:
    """What each tenant's running jobs hold."""
    held: dict[str, Usage] = collections.defaultdict(Usage)
    for job in jobs:
        if job.state is JobState.RUNNING:
            held[job.tenant].add(job)
    return held


def tenant_names(jobs: Collection[JobRecord], tenants: TenantsConfig) -> set[str]:
    """Every tenant in the tenants file or with a job."""
    return {*tenants.tenant_names(), *(j.tenant for j in jobs)}


def tenants_usage(jobs: Collection[JobRecord], tenants: TenantsConfig) -> list[dict]:
    """The ``lorafarm tenants`` rows: quota, weight, queued, running and usage per tenant."""
    held = held_by_tenant(jobs)
    states = collections.Counter((j.tenant, j.state) for j in jobs)
    out = []
    for name in sorted(tenant_names(jobs, tenants)):
        u = held.get(name, Usage())
        out.append({
            "tenant": name,
            "quota": tenants.quota_dict(name),
            "weight": tenants.weight(name),
            "queued": states[(name, JobState.QUEUED)],
            "running": states[(name, JobState.RUNNING)],
            "usage": {"workers": u.workers, "cpus": u.cpus, "gpus": u.gpus},
        })
    return out


class Chargeback:
    """Resource-seconds held by running jobs, and the per-tenant gauges, updated every tick."""

    def __init__(self, metrics: Metrics, now: float):
        self.metrics = metrics
        self.last = now

    def tick(self, jobs: Collection[JobRecord], tenants: TenantsConfig, now: float) -> None:
        m = self.metrics
        dt, self.last = now - self.last, now
        names = tenant_names(jobs, tenants)
        m.set_job_counts(collections.Counter((j.tenant, j.state.value) for j in jobs), names)
        oldest = dict.fromkeys(names, 0.0)
        for j in jobs:
            if j.state is JobState.QUEUED:
                oldest[j.tenant] = max(oldest[j.tenant], now - j.submitted_at)
        for tenant, age in oldest.items():
            m.oldest_queued.labels(tenant).set(age)
        held = held_by_tenant(jobs)
        for tenant in names:
            u = held.get(tenant, Usage())
            if u.gpus:
                m.gpu_seconds.labels(tenant).inc(u.gpus * dt)
            if u.cpus:
                m.cpu_seconds.labels(tenant).inc(u.cpus * dt)
            resources = {"workers": u.workers, "cpus": u.cpus, "gpus": u.gpus}
            for resource, value in resources.items():
                m.usage.labels(tenant, resource).set(value)
            for resource, value in tenants.quota_dict(tenant).items():
                if isinstance(value, int | float) and resource in resources:
                    m.quota.labels(tenant, resource).set(value)
