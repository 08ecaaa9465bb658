"""Can a job ever start? A job larger than its tenant's quota or than the whole cluster would
wait forever (and, as the head of the queue, hold a reservation forever), so it is refused
with the limit it breaks and where that limit is set."""

from __future__ import annotations

from collections.abc import Mapping

from ..spec.tenants import TenantsConfig
from .pool import EPS, Pool
from .quota import Usage
from .types import ClusterState, JobRequest, RunningJob

FIX = "use fewer workers or less per worker, or ask the operator to raise the limit"


def check_admissible(
    job: JobRequest | RunningJob, tenants: TenantsConfig, cluster_capacity: ClusterState | Mapping[str, float]
) -> str | None:
    """Why ``job`` can never start (every limit it breaks, one reason), or None if it can.

    ``cluster_capacity`` is a :class:`ClusterState` (its totals and node capacities count,
    not what is free now) or a mapping ``{"cpus": ..., "gpus": ...}`` of totals.
    """
    reasons = _quota_reasons(job, tenants) + _cluster_reasons(job, cluster_capacity)
    return "; ".join(reasons) + f" — {FIX}" if reasons else None


def _need(job: JobRequest | RunningJob, per_worker: float, unit: str) -> str:
    total = f"{job.workers * per_worker:g} {unit}"
    return total if job.workers == 1 else f"{total} ({job.workers} workers × {per_worker:g})"


def _quota_reasons(job: JobRequest | RunningJob, tenants: TenantsConfig) -> list[str]:
    entry = tenants.for_tenant(job.tenant)
    if entry is None:
        return []  # unknown tenants are refused by name, not by size
    where = tenants.entry_path(job.tenant)
    note = "" if where == f"tenants.{job.tenant}" else ", the entry for tenants not listed"
    text = {"workers": f"{job.workers} workers", "gpus": _need(job, job.gpus_per_worker, "GPUs"),
            "cpus": _need(job, job.cpus_per_worker, "CPUs")}
    return [f"needs {text[field]} but tenant {job.tenant!r} quota allows {getattr(entry.quota, field):g} "
            f"(tenants file: {where}.quota.{field}{note})"
            for field in Usage().over(entry.quota, job.workers, job.cpus, job.gpus)]


def _cluster_reasons(job: JobRequest | RunningJob, capacity: ClusterState | Mapping[str, float]) -> list[str]:
    if isinstance(capacity, ClusterState):
        total_cpus, total_gpus, nodes = capacity.total_cpus, capacity.total_gpus, capacity.nodes
    else:
        total_cpus, total_gpus, nodes = capacity.get("cpus", 0.0), capacity.get("gpus", 0.0), None
    out = []
    for need, total, per_worker, unit in ((job.workers * job.gpus_per_worker, total_gpus, job.gpus_per_worker, "GPUs"),
                                          (job.workers * job.cpus_per_worker, total_cpus, job.cpus_per_worker, "CPUs")):
        if need > total + EPS:
            out.append(f"needs {_need(job, per_worker, unit)} but the whole cluster has {total:g}")
    if not nodes:
        return out
    return _node_reasons(job, nodes) or out  # node shapes are the stricter test, and name the field


def _node_reasons(job: JobRequest | RunningJob, nodes) -> list[str]:
    """A worker larger than every node (of its accelerator type), or a gang that no set of
    idle nodes holds: each reason names the largest node shape and the field to change."""
    accel = getattr(job, "accelerator_type", None)
    if accel is not None and not any(n.accelerator_type == accel for n in nodes):
        types = sorted({n.accelerator_type for n in nodes if n.accelerator_type})
        return [f"resources.accelerator_type: {accel!r} is on no node (the cluster has "
                f"{', '.join(types) if types else 'no accelerator types'})"]
    pool = Pool(ClusterState.from_nodes(nodes))
    counts = pool.counts(job.cpus_per_worker, job.gpus_per_worker, accel, idle=True)
    hosts = [n for n in nodes if accel is None or n.accelerator_type == accel]
    big = max(hosts, key=lambda n: (n.total_gpus, n.total_cpus))
    if max(counts) < 1:
        field = ("resources.gpus_per_worker" if job.gpus_per_worker > big.total_gpus + EPS
                 else "resources.cpus_per_worker")
        return [f"{field}: one worker needs {job.cpus_per_worker:g} CPUs and {job.gpus_per_worker:g} GPUs on one "
                f"node but no node has that much (largest: {big.shape()}; {len(nodes)} node(s)) — set {field} to "
                "what that node holds"]
    fit = int(sum(min(k, job.workers) for k in counts))
    if fit < job.workers:
        return [f"resources.workers: needs {job.workers} workers of {job.cpus_per_worker:g} CPUs and "
                f"{job.gpus_per_worker:g} GPUs but at most {fit} fit on the cluster's nodes even when idle "
                f"(largest: {big.shape()}; {len(nodes)} node(s)) — set resources.workers to at most {fit}, "
                f"or less per worker"]
    return []
