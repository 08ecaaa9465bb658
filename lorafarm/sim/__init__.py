"""``lorafarm simulate``: replay a job trace through the scheduler's own policy at cluster scale.

Pure Python (no Ray, no torch): :mod:`.trace` reads traces, :mod:`.generate` makes seeded
synthetic ones, :mod:`.engine` is the discrete-event simulator and :mod:`.report` the summaries
and plots. :func:`run_policies` ties them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..spec.tenants import TenantsConfig
from .engine import ClusterSpec, SimResult, Simulator, fair_split
from .generate import generate, tenants_yaml
from .report import DEFAULT_STARVATION_BOUND_S, dumps, jain, markdown, percentile, summarize
from .trace import SimJob, TraceError, read_trace, write_trace

__all__ = [
    "ClusterSpec", "SimJob", "SimResult", "Simulator", "TraceError", "dumps", "fair_split", "generate", "jain",
    "markdown", "percentile", "read_trace", "run_policies", "simulate", "summarize", "tenants_yaml", "write_trace",
]


def simulate(jobs: Sequence[SimJob], cluster: ClusterSpec, tenants: TenantsConfig, policy: str = "lorafarm",
             tick_s: float | None = None, record_series: bool = True, estimates: bool = True) -> SimResult:
    """Run one named policy (``lorafarm``, ``fifo``, ``sjf``) over ``jobs``."""
    from ..policy.baselines import POLICIES

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} — use one of {', '.join(POLICIES)}")
    return Simulator(jobs, cluster, tenants, POLICIES[policy], policy, tick_s, record_series, estimates).run()


def run_policies(jobs: Sequence[SimJob], cluster: ClusterSpec, tenants: TenantsConfig, policies: Sequence[str],
                 starvation_bound_s: float = DEFAULT_STARVATION_BOUND_S, estimates: bool = True,
                 ) -> tuple[list[SimResult], list[dict[str, Any]]]:
    results = [simulate(jobs, cluster, tenants, p, estimates=estimates) for p in policies]
    return results, [summarize(r, starvation_bound_s) for r in results]
