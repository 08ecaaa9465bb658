"""Summaries of simulation runs: one JSON object and one Markdown table row per policy, and
PNG plots (matplotlib, Agg backend).

Definitions (all times in seconds):

* JCT (job completion time) = end − submit; queue wait = first start − submit.
* ``gpu_util``: GPU-seconds held / (GPUs × makespan).
* ``gpu_util_while_queued``: the same, over the time at least one job is queued.
* ``gpu_util_while_runnable``: over the time some queued job is within its tenant's quota, so
  that idle GPUs are the policy's doing and not a quota's (the figure the targets use).
* Per tenant: ``share`` = its fraction of all GPU-seconds; ``entitlement`` = its fraction of the
  weighted max-min fair GPU-seconds (at each instant the cluster is split by weight among the
  tenants with work, none getting more than it asks for or its quota allows);
  ``ratio`` = GPU-seconds held / fair GPU-seconds (1 = got exactly its fair share).
* ``jain``: Jain's fairness index over the tenants' ratios, (Σr)² / (n·Σr²): 1 = all equal.
* ``starved_jobs``: jobs that waited longer than ``starvation_bound_s``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import SimResult

DEFAULT_STARVATION_BOUND_S = 24 * 3600.0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (deterministic, no interpolation); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def jain(values: Sequence[float]) -> float:
    values = [v for v in values if v >= 0]
    sq = sum(v * v for v in values)
    return (sum(values) ** 2 / (len(values) * sq)) if values and sq > 0 else 1.0


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def summarize(result: SimResult, starvation_bound_s: float = DEFAULT_STARVATION_BOUND_S) -> dict[str, Any]:
    """The JSON summary of one run (deterministic: the same run gives the same bytes)."""
    outs = result.outcomes.values()
    done = [o for o in outs if o.end is not None]
    rejected = [o for o in outs if o.rejected]
    jct = [o.end - o.job.submit_time for o in done]
    wait = [o.start - o.job.submit_time for o in done]
    gpus = float(result.cluster.gpus)
    makespan = result.makespan
    tenants: dict[str, Any] = {}
    total_a = sum(result.tenant_gpu_s.values()) or 1.0
    total_e = sum(result.tenant_entitled_gpu_s.values()) or 1.0
    per_tenant_jobs: dict[str, list] = {}
    for o in done:
        per_tenant_jobs.setdefault(o.job.tenant, []).append(o)
    ratios = []
    weight_sum = sum(result.tenants.weight(t) for t in result.tenant_gpu_s) or 1.0
    for name in sorted(result.tenant_gpu_s):
        a, e = result.tenant_gpu_s[name], result.tenant_entitled_gpu_s[name]
        jobs = per_tenant_jobs.get(name, [])
        ratio = a / e if e > 0 else 1.0
        if e > 0:
            ratios.append(ratio)
        tenants[name] = {
            "jobs": len(jobs), "weight": result.tenants.weight(name),
            "weight_share": _r(result.tenants.weight(name) / weight_sum),
            "gpu_hours": _r(a / 3600.0, 2), "share": _r(a / total_a), "entitlement": _r(e / total_e),
            "ratio": _r(ratio), "avg_jct_s": _r(sum(o.end - o.job.submit_time for o in jobs) / len(jobs), 1) if jobs else 0.0,
            "p95_wait_s": _r(percentile([o.start - o.job.submit_time for o in jobs], 95), 1),
        }
    return {
        "policy": result.policy,
        "gpus": gpus, "nodes": result.cluster.nodes,
        "jobs": len(result.outcomes), "finished": len(done), "rejected": len(rejected),
        "unfinished": len(result.outcomes) - len(done) - len(rejected),
        "avg_jct_s": _r(sum(jct) / len(jct), 1) if jct else 0.0,
        "p50_jct_s": _r(percentile(jct, 50), 1), "p95_jct_s": _r(percentile(jct, 95), 1),
        "avg_wait_s": _r(sum(wait) / len(wait), 1) if wait else 0.0,
        "p95_wait_s": _r(percentile(wait, 95), 1), "max_wait_s": _r(max(wait, default=0.0), 1),
        "gpu_util": _r(result.busy_gpu_s / (gpus * makespan)) if makespan > 0 else 0.0,
        "gpu_util_while_queued": _r(result.busy_while_queued_gpu_s / (gpus * result.queued_s))
        if result.queued_s > 0 else 1.0,
        "gpu_util_while_runnable": _r(result.busy_while_runnable_gpu_s / (gpus * result.runnable_s))
        if result.runnable_s > 0 else 1.0,
        "makespan_s": _r(makespan, 1),
        "jain": _r(jain(ratios)),
        "quota_violations": result.quota_violations,
        "capacity_violations": result.capacity_violations,
        "starvation_bound_s": starvation_bound_s,
        "starved_jobs": sum(1 for w in wait if w > starvation_bound_s),
        "preemptions": result.preemptions,
        "max_queue": result.max_queue,
        "decide_calls": result.decide_calls,
        "tenants": tenants,
    }


def dumps(summaries: Sequence[dict[str, Any]]) -> str:
    """Byte-stable JSON for a list of summaries."""
    return json.dumps({"policies": list(summaries)}, sort_keys=True, indent=1) + "\n"


def _h(seconds: float) -> str:
    return f"{seconds / 3600.0:.2f} h"


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """One table, a row per policy."""
    head = ("| policy | jobs | avg JCT | p95 JCT | p95 wait | max wait | GPU util | util while queued "
            "| makespan | Jain | quota violations | starved |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        lines.append(
            f"| {s['policy']} | {s['finished']}/{s['jobs']} | {_h(s['avg_jct_s'])} | {_h(s['p95_jct_s'])} "
            f"| {_h(s['p95_wait_s'])} | {_h(s['max_wait_s'])} | {s['gpu_util']:.1%} "
            f"| {s['gpu_util_while_runnable']:.1%} | {_h(s['makespan_s'])} | {s['jain']:.3f} "
            f"| {s['quota_violations']} | {s['starved_jobs']} |")
    return "\n".join(lines) + "\n"


def tenants_markdown(summary: dict[str, Any], top: int = 10) -> str:
    """Per-tenant share vs entitlement for one policy (the ``top`` largest tenants)."""
    rows = sorted(summary["tenants"].items(), key=lambda kv: -kv[1]["gpu_hours"])[:top]
    lines = [f"{summary['policy']}: share vs entitlement (top {len(rows)} tenants by GPU-hours)", "",
             "| tenant | weight | jobs | GPU-hours | share | entitlement | ratio | p95 wait |", "|---|---|---|---|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t['weight']:g} | {t['jobs']} | {t['gpu_hours']:.1f} | {t['share']:.1%} "
                     f"| {t['entitlement']:.1%} | {t['ratio']:.2f} | {_h(t['p95_wait_s'])} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- plots


def plot(results: Sequence[SimResult], out: str | Path, top_tenants: int = 8) -> list[Path]:
    """JCT CDF per policy, utilisation and queue length over time, per-tenant GPU share over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        jct = sorted((o.end - o.job.submit_time) / 3600.0 for o in r.outcomes.values() if o.end is not None)
        if jct:
            ax.step(jct, [(i + 1) / len(jct) for i in range(len(jct))], where="post", label=r.policy)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (hours, log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("JCT CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "jct_cdf.png"))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        if not r.series:
            continue
        t = [p[0] / 3600.0 for p in r.series] + [r.makespan / 3600.0]
        util = [p[1] / r.cluster.gpus for p in r.series]
        qlen = [p[2] for p in r.series]
        a1.step(t, util + util[-1:], where="post", label=r.policy, linewidth=0.7)
        a2.step(t, qlen + qlen[-1:], where="post", label=r.policy, linewidth=0.7)
    a1.set_ylabel("GPU utilisation")
    a1.set_ylim(0, 1.05)
    a1.legend(loc="lower right")
    a2.set_ylabel("queued jobs")
    a2.set_xlabel("time (hours)")
    a1.set_title("utilisation and queue length over time")
    written.append(_save(fig, out / "utilisation.png"))

    for r in results:
        written.append(_share_plot(plt, r, out / f"tenant_share_{r.policy}.png", top_tenants))
    return written


def _share_plot(plt, r: SimResult, path: Path, top: int) -> Path:
    bins = 200
    horizon = max(r.makespan, 1.0)
    width = horizon / bins
    names = sorted(r.tenant_gpu_s, key=lambda n: -r.tenant_gpu_s[n])
    shown = names[:top]
    held: dict[str, float] = {}
    since: dict[str, float] = {}
    acc = {n: [0.0] * bins for n in [*shown, "other"]}

    def add(name: str, t0: float, t1: float, gpus: float) -> None:
        key = name if name in acc else "other"
        b = int(t0 // width)
        while t0 < t1 and b < bins:
            end = min(t1, (b + 1) * width)
            acc[key][b] += gpus * (end - t0)
            t0, b = end, b + 1

    for t, name, delta in r.tenant_series:
        if held.get(name):
            add(name, since[name], t, held[name])
        held[name] = held.get(name, 0.0) + delta
        since[name] = t
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = [(i + 0.5) * width / 3600.0 for i in range(bins)]
    ys = [[v / (width * r.cluster.gpus) for v in acc[k]] for k in acc]
    ax.stackplot(xs, ys, labels=list(acc), linewidth=0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time (hours)")
    ax.set_ylabel("share of the cluster's GPUs")
    ax.set_title(f"{r.policy}: per-tenant GPU share over time")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
