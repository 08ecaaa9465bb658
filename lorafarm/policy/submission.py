"""Whether a job may join the queue at all: the rules the scheduler's ``submit`` and the
simulator's submissions share (the simulator imports them; it copies nothing)."""

from __future__ import annotations

from collections.abc import Mapping

from ..spec.tenants import TenantsConfig
from .admit import check_admissible
from .types import ClusterState, JobRequest


def job_priority(tenants: TenantsConfig, tenant: str, asked: str | None) -> str:
    """The class a job runs at: the one it asks for, else its tenant's default."""
    return asked or tenants.default_priority_for(tenant)


def submission_problems(request: JobRequest, tenants: TenantsConfig, capacity: ClusterState | Mapping[str, float],
                        queued_by_tenant: Mapping[str, int]) -> list[str]:
    """Every reason ``request`` may not be queued (empty: it may): its tenant is unknown; its
    priority class is not allowed; it could never fit its quota or the cluster (``capacity``:
    totals count, see :func:`check_admissible`); its tenant already has ``max_queued`` queued.
    An unknown tenant is the only problem reported; ``max_queued`` only when nothing else is wrong."""
    tenant = request.tenant
    if tenants.for_tenant(tenant) is None:
        return [f"tenant: {tenant!r} is not in the tenants file and unknown tenants are rejected "
                "— ask the operator to add it"]
    problems = []
    allowed = tenants.allowed_priorities(tenant)
    if request.priority not in allowed:
        problems.append(f"priority: {request.priority!r} is not allowed for tenant {tenant!r} — use one of "
                        f"{', '.join(sorted(allowed))}")
    reason = check_admissible(request, tenants, capacity)
    if reason:
        problems.append(f"resources: {reason}")
    limit = tenants.max_queued(tenant)
    queued = queued_by_tenant.get(tenant, 0)
    if not problems and limit is not None and queued >= limit:
        problems.append(f"tenant: {tenant!r} already has {queued} queued jobs (quota max_queued {limit}) "
                        "— wait for some to start or cancel one")
    return problems
