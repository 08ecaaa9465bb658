"""What tenants hold and are charged for, counted once: the ``lorafarm tenants`` view, the
chargeback counters (CPU/GPU-seconds held by running jobs) and the per-tenant gauges."""

from __future__ import annotations

import collections
from collections.abc import Collection, Sequence

from ..metrics import STATES, Metrics
from ..policy import RunningJob, Usage, usage_by_tenant
from ..spec import TenantsConfig
from .state import JobRecord, JobState


def tenant_names(jobs: Collection[JobRecord], tenants: TenantsConfig) -> set[str]:
    """Every tenant in the tenants file or with a job."""
    return {*tenants.tenant_names(), *(j.tenant for j in jobs)}


def tenants_usage(jobs: Collection[JobRecord], tenants: TenantsConfig,
                  running: Sequence[RunningJob]) -> list[dict]:
    """The ``lorafarm tenants`` rows: quota, weight, queued, running and usage per tenant; usage
    is what ``running`` (the policy's views: an elastic job at its current size) holds, the
    figure quotas are checked against and the gauges and chargeback show."""
    held = usage_by_tenant(running)
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
    the :class:`~lorafarm.scheduler.jobindex.JobIndex`: its cost grows with tenants, not with the
    records the store holds, and a tick in which nothing started or ended sets only the gauges
    whose value moved (the job counts of tenants whose jobs moved, queue ages, the counters)."""

    def __init__(self, metrics: Metrics, now: float):
        self.metrics = metrics
        self.last = now
        self._set: dict[tuple, list] = {}  # (gauge, labels) -> [labelled child, value last set]
        self._tenants: TenantsConfig | None = None  # the tenants file the names and quotas are from
        self._names: set[str] = set()  # every tenant in the tenants file or with a job
        self._held: tuple[Sequence[RunningJob], dict[str, Usage]] = ((), {})  # running views -> held by tenant

    def _gauge(self, gauge, labels: tuple[str, ...], value: float) -> None:
        key = (id(gauge), labels)
        hit = self._set.get(key)
        if hit is None:
            hit = self._set[key] = [gauge.labels(*labels), None]
        if hit[1] != value:
            hit[0].set(value)
            hit[1] = value

    def tick(self, index, tenants: TenantsConfig, now: float, running: Sequence[RunningJob]) -> None:
        """Charge ``running`` (the policy's views: what each job holds now) for the time since
        the last tick and bring the gauges up to date."""
        m = self.metrics
        dt, self.last = now - self.last, now
        changed, index.changed_tenants = index.changed_tenants, set()
        if tenants is not self._tenants:  # first tick, or a reloaded tenants file: every tenant afresh
            self._tenants = tenants
            self._names = {*tenants.tenant_names(), *(t for (t, _), n in index.counts.items() if n)}
            changed = set(self._names)
        else:
            self._names |= changed
        for tenant in changed:
            for state in STATES:
                self._gauge(m.jobs, (tenant, state), index.counts.get((tenant, state), 0))
            for resource, value in tenants.quota_dict(tenant).items():
                if isinstance(value, int | float) and resource in USAGE_FIELDS:
                    self._gauge(m.quota, (tenant, resource), value)
        oldest = index.queue.oldest_submitted()
        for tenant in self._names:
            self._gauge(m.oldest_queued, (tenant,), max(0.0, now - oldest[tenant]) if tenant in oldest else 0.0)
        if running is not self._held[0]:
            self._held = (running, usage_by_tenant(running))
        held = self._held[1]
        for tenant in self._names:
            u = held.get(tenant) or _NOTHING
            if u.gpus:
                m.for_tenant(m.gpu_seconds, tenant).inc(u.gpus * dt)
            if u.cpus:
                m.for_tenant(m.cpu_seconds, tenant).inc(u.cpus * dt)
            self._gauge(m.usage, (tenant, "workers"), u.workers)
            self._gauge(m.usage, (tenant, "cpus"), u.cpus)
            self._gauge(m.usage, (tenant, "gpus"), u.gpus)



USAGE_FIELDS = ("workers", "cpus", "gpus")
_NOTHING = Usage()
