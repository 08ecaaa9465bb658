"""What tenants hold and are charged for, counted once: the ``lorafarm tenants`` view, the
chargeback counters (CPU/GPU-seconds held by running jobs) and the per-tenant gauges."""

from __future__ import annotations

import collections
from collections.abc import Collection

from ..metrics import STATES, Metrics
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
    """Resource-seconds held by running jobs, and the per-tenant gauges, updated every tick from
    the :class:`~lorafarm.scheduler.jobindex.JobIndex` (what runs, what waits, counts): its cost
    grows with tenants, not with the records the store holds."""

    def __init__(self, metrics: Metrics, now: float):
        self.metrics = metrics
        self.last = now
        self._set: dict[tuple, float] = {}  # (gauge, labels) -> value last set: unchanged gauges are left alone

    def _gauge(self, gauge, labels: tuple[str, ...], value: float) -> None:
        key = (id(gauge), labels)
        if self._set.get(key) != value:
            gauge.labels(*labels).set(value)
            self._set[key] = value

    def tick(self, index, tenants: TenantsConfig, now: float) -> None:
        m = self.metrics
        dt, self.last = now - self.last, now
        names = {*tenants.tenant_names(), *(t for (t, _), n in index.counts.items() if n)}
        for tenant in names:
            for state in STATES:
                self._gauge(m.jobs, (tenant, state), index.counts.get((tenant, state), 0))
        oldest = index.queue.oldest_submitted()
        for tenant in names:
            self._gauge(m.oldest_queued, (tenant,), max(0.0, now - oldest[tenant]) if tenant in oldest else 0.0)
        held = held_by_tenant(index.running.values())
        for tenant in names:
            u = held.get(tenant, Usage())
            if u.gpus:
                m.gpu_seconds.labels(tenant).inc(u.gpus * dt)
            if u.cpus:
                m.cpu_seconds.labels(tenant).inc(u.cpus * dt)
            resources = {"workers": u.workers, "cpus": u.cpus, "gpus": u.gpus}
            for resource, value in resources.items():
                self._gauge(m.usage, (tenant, resource), value)
            for resource, value in tenants.quota_dict(tenant).items():
                if isinstance(value, int | float) and resource in resources:
                    self._gauge(m.quota, (tenant, resource), value)
