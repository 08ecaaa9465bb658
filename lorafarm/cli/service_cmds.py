"""CLI commands that talk to the scheduler (``serve``, ``submit``, ``status``, ...)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from ..spec import load_spec
from .main import EXIT_FAILED, EXIT_OK, emit_json
from .paths import absolutize_local_paths

EXIT_CANCELLED = 3
EXIT_BY_STATE = {"SUCCEEDED": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": EXIT_CANCELLED}


def serve(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import serve as start
    from ..storage import Store

    tenants_text = Path(args.tenants).read_text() if args.tenants else None
    if tenants_text is not None:
        from ..tenants import load_tenants

        load_tenants(tenants_text)  # refuse a bad tenants file here, with every problem
    store = Store.open(args.store)
    _, created = start(store.root, tenants_text, args.metrics_port, args.hang_timeout, args.reserve_cpus)
    verb = "started" if created else "already running"
    console.print(f"lorafarm scheduler {verb} (store {store.root})", highlight=False)
    if args.json:
        emit_json({"created": created, "store": store.root})
    return EXIT_OK


def submit(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    spec = absolutize_local_paths(load_spec(args.spec, args.overrides), args.spec)
    summary = call("submit", spec.model_dump(mode="json"))
    job_id = summary["job_id"]
    if not args.wait:
        if args.json:
            emit_json(summary)
        else:
            print(job_id)
        return EXIT_OK
    console.print(f"submitted {job_id}", highlight=False)
    return wait_for(job_id, console, args.json, cancel_on_signal=True)


def wait_for(job_id: str, console: Console, as_json: bool, cancel_on_signal: bool) -> int:
    """Follow a job to its end with a progress bar; SIGINT/SIGTERM cancel it (so `ray job stop`
    on the submission cancels the lorafarm job)."""
    from ..scheduler.client import call
    from .progress import JobProgress

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    if cancel_on_signal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    last_step = 0
    with JobProgress(console, enabled=not as_json) as progress:
        while True:
            if stop["signal"] is not None:
                console.print(f"signal {stop['signal']}: cancelling {job_id}")
                summary = call("cancel", job_id)
                break
            summary = call("status", job_id, timeout=30)
            p = summary.get("progress") or {}
            if p.get("step", 0) > last_step:
                last_step = p["step"]
                progress({"kind": "step", **p})
            if summary["state"] in EXIT_BY_STATE:
                break
            time.sleep(0.5)
    state = summary["state"]
    if as_json:
        emit_json(summary)
    elif state == "SUCCEEDED":
        console.print(f"[green]succeeded[/] {job_id}", highlight=False)
        print(summary["adapter_uri"])
    else:
        console.print(f"[red]{state.lower()}[/] {job_id}: {summary.get('reason')}", highlight=False)
    return EXIT_BY_STATE.get(state, EXIT_FAILED)


def status(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    if getattr(args, "watch", False):
        return wait_for(args.job, console, args.json, cancel_on_signal=False)
    summary = call("status", args.job)
    if args.json:
        emit_json(summary)
    else:
        for key in ("job_id", "tenant", "state", "reason", "adapter_uri", "progress"):
            if summary.get(key) not in (None, {}):
                console.print(f"{key}: {summary[key]}", highlight=False)
    return EXIT_OK


def list_jobs(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    jobs = call("list", args.tenant, args.state)
    if args.json:
        emit_json(jobs)
        return EXIT_OK
    table = Table("tenant", "state", "workers", "step", "submitted")
    # job ids are what users copy into the next command: never elide them
    table.columns.insert(0, Column("job", no_wrap=True, min_width=max((len(j["job_id"]) for j in jobs), default=3)))
    for j in jobs:
        p = j.get("progress") or {}
        step = f"{p['step']}/{p['total_steps']}" if "step" in p else ""
        table.add_row(j["job_id"], j["tenant"], j["state"], str(j["workers"]), step,
                      time.strftime("%H:%M:%S", time.localtime(j["submitted_at"])))
    Console().print(table)
    return EXIT_OK


def cancel(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    summary = call("cancel", args.job)
    if args.json:
        emit_json(summary)
    else:
        console.print(f"{args.job}: {summary['state']}")
    return EXIT_OK


def events(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    for event in call("events", args.job):
        if args.json:
            sys.stdout.write(json.dumps(event) + "\n")
        else:
            when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
            console.print(f"{when} {event['state']:<10} {event['kind']:<16} {event['message']}", highlight=False)
    return EXIT_OK


def logs(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    offset = 0
    while True:
        lines, offset, ended = call("logs", args.job, offset)
        for line in lines:
            print(line, flush=True)
        if not args.follow or ended:
            return EXIT_OK
        time.sleep(0.5)


def tenants(args: argparse.Namespace, console: Console) -> int:
    from ..scheduler.client import call

    rows = call("tenants")
    if args.json:
        emit_json(rows)
        return EXIT_OK
    table = Table("tenant", "weight", "quota", "queued", "running", "usage")
    for r in rows:
        table.add_row(r["tenant"], f"{r['weight']:g}", _fmt(r["quota"]), str(r["queued"]), str(r["running"]),
                      _fmt(r["usage"]))
    Console().print(table)
    return EXIT_OK


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in d.items() if v is not None)
