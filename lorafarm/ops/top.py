"""``lorafarm top``: tenants (quota, usage, queued, running) and running jobs (step/total, loss,
tokens/s, ETA) from the scheduler's ``tenants`` and ``list`` answers. Pure: the CLI fetches,
this shapes and renders."""

from __future__ import annotations

import time
from typing import Any

JOB_KEYS = ("step", "total_steps", "loss", "eval_loss", "tokens_per_s", "step_time_s", "gpu_memory_bytes", "mfu")


def snapshot(tenants: list[dict[str, Any]], jobs: list[dict[str, Any]], now: float | None = None,
             tenant: str | None = None) -> dict[str, Any]:
    """``{"time", "tenants": [...], "jobs": [...], "queued": [...]}`` — the ``top --json`` object
    (``queued``, with each queued job's ``eta_start``/``eta_end``, only when some are). Jobs are the
    running ones; ``eta_s`` is the scheduler's estimate of the time left (its ``eta_end``; without
    one, remaining steps × the last step time; None before a step)."""
    now = time.time() if now is None else now
    rows = [{k: t.get(k) for k in ("tenant", "weight", "quota", "usage", "queued", "running")}
            for t in tenants if tenant is None or t["tenant"] == tenant]
    out_jobs = []
    for j in jobs:
        if j.get("state") != "RUNNING" or (tenant is not None and j["tenant"] != tenant):
            continue
        p = j.get("progress") or {}
        row: dict[str, Any] = {"job_id": j["job_id"], "tenant": j["tenant"], "name": j.get("name"),
                               "priority": j.get("priority"), "workers": j.get("workers"),
                               "started_at": j.get("started_at")}
        row.update({k: p.get(k) for k in JOB_KEYS})
        eta = None
        if j.get("eta_end") is not None:
            eta = max(0.0, j["eta_end"] - now)
        elif p.get("step") is not None and p.get("total_steps") and p.get("step_time_s") is not None:
            eta = max(0, p["total_steps"] - p["step"]) * p["step_time_s"]
        row["eta_s"] = eta
        row["running_s"] = now - j["started_at"] if j.get("started_at") else None
        out_jobs.append(row)
    out_jobs.sort(key=lambda r: (r["tenant"], r.get("started_at") or 0))
    queued = sorted(({"job_id": j["job_id"], "tenant": j["tenant"], "name": j.get("name"), "eta_start": j.get("eta_start"),
                      "eta_end": j.get("eta_end")} for j in jobs
                     if j.get("state") == "QUEUED" and (tenant is None or j["tenant"] == tenant)),
                    key=lambda r: (r["eta_start"] is None, r["eta_start"] or 0, r["job_id"]))
    return {"time": now, "tenants": rows, "jobs": out_jobs, **({"queued": queued} if queued else {})}


def _num(v: Any, fmt: str = "{:g}") -> str:
    return "-" if v is None else fmt.format(v)


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _resources(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return " ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in d.items() if v is not None)


def render(snap: dict[str, Any]):
    """Two rich tables (tenants, running jobs) as one renderable."""
    from rich.console import Group
    from rich.table import Column, Table

    tenants = Table("tenant", "quota", "usage", "queued", "running", title="tenants", title_justify="left")
    for t in snap["tenants"]:
        tenants.add_row(t["tenant"], _resources(t.get("quota")), _resources(t.get("usage")), str(t.get("queued", 0)),
                        str(t.get("running", 0)))
    jobs = Table(Column("job", no_wrap=True), "tenant", "step", "loss", "eval", "tok/s", "ETA", "running",
                 title="running jobs", title_justify="left")
    gpu = any(j.get("gpu_memory_bytes") is not None for j in snap["jobs"])
    if gpu:
        jobs.add_column("GPU mem")
        jobs.add_column("MFU")
    for j in snap["jobs"]:
        step = f"{j['step']}/{j['total_steps']}" if j.get("step") is not None else "-"
        row = [j["job_id"], j["tenant"], step, _num(j.get("loss"), "{:.4f}"), _num(j.get("eval_loss"), "{:.4f}"),
               _num(j.get("tokens_per_s"), "{:,.0f}"), _duration(j.get("eta_s")), _duration(j.get("running_s"))]
        if gpu:
            mem = j.get("gpu_memory_bytes")
            row += [_num(mem / 2**30 if mem is not None else None, "{:.1f} GiB"), _num(j.get("mfu"), "{:.1%}")]
        jobs.add_row(*row)
    queued = Table(Column("job", no_wrap=True), "tenant", "starts in", "ends in", title="queued jobs (ETA)",
                   title_justify="left")
    for j in snap.get("queued", [])[:20]:
        queued.add_row(j["job_id"], j["tenant"], _duration(None if j["eta_start"] is None else j["eta_start"] - snap["time"]),
                       _duration(None if j["eta_end"] is None else j["eta_end"] - snap["time"]))
    stamp = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
    return Group(f"lorafarm top — {stamp}", tenants, jobs, *([queued] if snap.get("queued") else []))
