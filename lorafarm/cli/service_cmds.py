"""Commands that talk to the scheduler: ``serve``, ``submit``, ``status``, ``list``, ``cancel``,
``events``, ``logs``, ``tenants``."""

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

from .. import api
from .args import STORE_HELP, add_spec_args
from .output import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, emit_json

EXIT_BY_STATE = {"SUCCEEDED": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": EXIT_CANCELLED}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the scheduler on the current Ray cluster (harmless if running)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--tenants", help="tenants file (YAML): quotas, weights, priority classes")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--hang-timeout", type=float, default=1800.0, help="fail a job with no progress for this long (s)")
    p.add_argument("--reserve-cpus", type=float, default=0.0, help="logical CPUs kept free for data tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=serve)

    p = sub.add_parser("submit", help="queue a job with the scheduler")
    add_spec_args(p)
    p.add_argument("--wait", action="store_true", help="follow the job; exit 0/1/3 on succeeded/failed/cancelled")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=submit)

    for name, help_text, handler in [("status", "a job's state", status), ("cancel", "cancel a job", cancel),
                                     ("events", "a job's events", events)]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job")
        p.add_argument("--json", action="store_true")
        if name == "status":
            p.add_argument("--watch", action="store_true", help="follow with a live progress bar")
        p.set_defaults(handler=handler)

    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(handler=logs)

    p = sub.add_parser("list", help="jobs, optionally by tenant and state")
    p.add_argument("--tenant")
    p.add_argument("--state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_jobs)

    p = sub.add_parser("tenants", help="quota, usage, queued and running per tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=tenants)


def serve(args: argparse.Namespace, console: Console) -> int:
    from ..spec import load_tenants
    from ..storage import Store

    tenants_text = Path(args.tenants).read_text() if args.tenants else None
    if tenants_text is not None:
        load_tenants(tenants_text)  # refuse a bad tenants file here, with every problem
    store = Store.open(args.store)
    created = api.start_scheduler(store.root, tenants_text, args.metrics_port, args.hang_timeout, args.reserve_cpus)
    verb = "started" if created else "already running"
    console.print(f"lorafarm scheduler {verb} (store {store.root})", highlight=False)
    if args.json:
        emit_json({"created": created, "store": store.root})
    return EXIT_OK


def submit(args: argparse.Namespace, console: Console) -> int:
    from ..spec import load_spec
    from .paths import absolutize_local_paths

    spec = absolutize_local_paths(load_spec(args.spec, args.overrides), args.spec)
    summary = api.submit(spec)
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
                summary = api.scheduler_call("cancel", job_id)
                break
            summary = api.scheduler_call("status", job_id, timeout=30)
            p = summary.get("progress") or {}
            if p.get("step", 0) > last_step:
                last_step = p["step"]
                progress(_step_event(p))
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


def _step_event(progress: dict[str, Any]):
    """The scheduler's summary of a job's last step as the event the progress bar reads."""
    import dataclasses

    from ..events import Step

    known = {f.name for f in dataclasses.fields(Step)}
    return Step(**{k: v for k, v in progress.items() if k in known})


def status(args: argparse.Namespace, console: Console) -> int:
    if args.watch:
        return wait_for(args.job, console, args.json, cancel_on_signal=False)
    summary = api.scheduler_call("status", args.job)
    if args.json:
        emit_json(summary)
    else:
        for key in ("job_id", "tenant", "state", "reason", "adapter_uri", "progress"):
            if summary.get(key) not in (None, {}):
                console.print(f"{key}: {summary[key]}", highlight=False)
    return EXIT_OK


def list_jobs(args: argparse.Namespace, console: Console) -> int:
    jobs = api.scheduler_call("list", args.tenant, args.state)
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
    summary = api.scheduler_call("cancel", args.job)
    if args.json:
        emit_json(summary)
    else:
        console.print(f"{args.job}: {summary['state']}")
    return EXIT_OK


def events(args: argparse.Namespace, console: Console) -> int:
    for event in api.scheduler_call("events", args.job):
        if args.json:
            sys.stdout.write(json.dumps(event) + "\n")
        else:
            when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
            console.print(f"{when} {event['state']:<10} {event['kind']:<16} {event['message']}", highlight=False)
    return EXIT_OK


def logs(args: argparse.Namespace, console: Console) -> int:
    offset = 0
    while True:
        lines, offset, ended = api.scheduler_call("logs", args.job, offset)
        for line in lines:
            print(line, flush=True)
        if not args.follow or ended:
            return EXIT_OK
        time.sleep(0.5)


def tenants(args: argparse.Namespace, console: Console) -> int:
    rows = api.scheduler_call("tenants")
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
