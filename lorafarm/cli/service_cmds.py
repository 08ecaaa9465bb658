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
from rich.markup import escape
from rich.table import Column, Table

from .. import api
from ..errors import SchedulerUnavailable, SpecError
from .args import STORE_HELP, add_access_args, add_spec_args, notice_printer
from .output import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, emit_json, number, warn

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")  # what `list --state` takes
EXIT_BY_STATE = {"SUCCEEDED": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": EXIT_CANCELLED}


RESTART_WAIT_S = 120.0  # how long `submit --wait` / `status --watch` wait for a restarted scheduler


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the scheduler on the current Ray cluster (harmless if running)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--tenants", help="tenants file (YAML): quotas, weights, priority classes "
                                     "(default: the one the last `serve` of this store was given)")
    p.add_argument("--metrics-port", type=number(1, integer=True, maximum=65535), default=None,
                   help="serve Prometheus /metrics on this port (default: the last serve's, else none)")
    p.add_argument("--hang-timeout", type=number(0, above=True), default=None,
                   help="fail a job with no progress for this long, in s (default: the last serve's, else 1800)")
    p.add_argument("--reserve-cpus", type=number(0), default=None,
                   help="logical CPUs kept free for data tasks (default: the last serve's, else 0)")
    p.add_argument("--api-port", type=number(1, integer=True, maximum=65535), default=None,
                   help="serve the tenant REST API on this port (same API keys; OpenAPI at /openapi.json; "
                        "default: the last serve's, else none)")
    add_access_args(p, api=False)
    p.add_argument("--reload-tenants", action="store_true",
                   help="when a scheduler already runs: validate --tenants and swap it in (a bad file is refused "
                        "and the old one kept)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=serve)

    p = sub.add_parser("submit", help="queue a job with the scheduler")
    add_spec_args(p)
    add_access_args(p)
    p.add_argument("--wait", action="store_true", help="follow the job; exit 0/1/3 on succeeded/failed/cancelled")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=submit)

    for name, help_text, handler in [("status", "a job's state", status), ("cancel", "cancel a job", cancel),
                                     ("events", "a job's events", events)]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job")
        p.add_argument("--json", action="store_true")
        add_access_args(p)
        if name == "status":
            p.add_argument("--watch", action="store_true", help="follow with a live progress bar")
        p.set_defaults(handler=handler)

    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true")
    add_access_args(p)
    p.set_defaults(handler=logs)

    p = sub.add_parser("list", help="jobs, optionally by tenant and state")
    p.add_argument("--tenant")
    p.add_argument("--state", help="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED")
    p.add_argument("--json", action="store_true")
    add_access_args(p)
    p.set_defaults(handler=list_jobs)

    p = sub.add_parser("tenants", help="quota, usage, queued and running per tenant")
    p.add_argument("--json", action="store_true")
    add_access_args(p)
    p.set_defaults(handler=tenants)


def _read_tenants(path: str | None) -> str | None:
    """The tenants file's text, validated here with every problem (nothing starts otherwise)."""
    if path is None:
        return None
    from ..spec import load_tenants

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"--tenants {path}: no such file — give the path of a tenants YAML file"]) from None
    except IsADirectoryError:
        raise SpecError([f"--tenants {path}: is a directory — give the path of a tenants YAML file"]) from None
    except UnicodeDecodeError as e:
        raise SpecError([f"--tenants {path}: not UTF-8 text (byte {e.start}) — give a tenants YAML file"]) from None
    except OSError as e:
        raise SpecError([f"--tenants {path}: cannot be read ({e.strerror}) — check the path and its permissions"]) \
            from None
    load_tenants(text)  # refuse a bad tenants file here, with every problem
    return text


def serve(args: argparse.Namespace, console: Console) -> int:
    from ..storage import Store

    tenants_text = _read_tenants(args.tenants)
    if args.reload_tenants and tenants_text is None:
        raise SpecError(["--reload-tenants: give the new file with --tenants FILE"])
    store = Store.open(args.store)
    created = api.start_scheduler(store.root, tenants_text, args.metrics_port, args.hang_timeout, args.reserve_cpus,
                                  args.api_port)
    info = api.scheduler_call("ping")  # what it REALLY runs with (a running one may serve another store)
    reloaded = False
    out = console if args.json else Console(highlight=False)  # human lines to stdout; --json keeps stdout for JSON
    if not created:
        if args.store and info["store"] != store.root:
            warn(console, f"--store {store.root} ignored: the running scheduler serves {info['store']} (one "
                          "scheduler per Ray cluster)")
        if tenants_text is not None and tenants_text != info.get("tenants_text"):
            if not args.reload_tenants:
                raise SpecError([f"--tenants {args.tenants}: the running scheduler has a different tenants file — "
                                 f"swap it in with `lorafarm serve --tenants {args.tenants} --reload-tenants`"])
            info = api.scheduler_call("reload_tenants", tenants_text)
            reloaded = True
        config = info.get("config") or {}
        for flag, key, value in (("--metrics-port", "metrics_port", args.metrics_port),
                                 ("--hang-timeout", "hang_timeout_s", args.hang_timeout),
                                 ("--reserve-cpus", "reserve_cpus", args.reserve_cpus),
                                 ("--api-port", "api_port", args.api_port)):
            if value is not None and key in config and value != config[key]:
                warn(console, f"{flag} {value:g} ignored: the running scheduler has {'none' if config[key] is None else config[key]} (it applies when "
                              "a scheduler starts)")
    if not info.get("keys"):
        warn(console, escape("the tenants file lists no API keys: tenants are unauthenticated — any caller may "
                             "submit as, and see the jobs of, any tenant (fine for one team; add `keys: [sha256:…]` "
                             "per tenant and `admin_keys`, see lorafarm/tenants.py)"))
    verb = "started" if created else ("running; tenants file reloaded" if reloaded else "already running")
    out.print(f"lorafarm scheduler {verb} (store {info['store']})", highlight=False, soft_wrap=True)
    if (info.get("config") or {}).get("api_port"):
        out.print(f"tenant REST API on port {info['config']['api_port']} (OpenAPI schema at /openapi.json)",
                  highlight=False)
    if args.json:
        emit_json({"created": created, "store": info["store"], "reloaded": reloaded,
                   "config": info.get("config"), "jobs": info.get("jobs"), "running": info.get("running")})
    return EXIT_OK


def submit(args: argparse.Namespace, console: Console) -> int:
    from ..spec import load_spec
    from .paths import absolutize_local_paths

    spec = absolutize_local_paths(load_spec(args.spec, args.overrides), args.spec)
    summary = api.submit(spec, on_notice=notice_printer(console))  # the preflight: a bad spec is never queued
    job_id = summary["job_id"]
    if not args.wait:
        if args.json:
            emit_json(summary)
        else:
            print(job_id)
        return EXIT_OK
    console.print(f"submitted {job_id}", highlight=False)
    return wait_for(job_id, console, args.json, cancel_on_signal=True)


def wait_for(job_id: str, console: Console, as_json: bool, cancel_on_signal: bool,
             restart_wait_s: float = RESTART_WAIT_S) -> int:
    """Follow a job to its end with a progress bar; SIGINT/SIGTERM cancel it (so `ray job stop`
    on the submission cancels the lorafarm job). A scheduler that dies or restarts meanwhile is
    waited for (up to ``restart_wait_s``): the restarted one recovers the job, and it is followed on."""
    from .progress import JobProgress

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    if cancel_on_signal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    last_step = 0
    shown_eta = ""
    gone_since: float | None = None
    with JobProgress(console, enabled=not as_json) as progress:
        while True:
            try:
                if stop["signal"] is not None:
                    console.print(f"signal {stop['signal']}: cancelling {job_id}")
                    summary = api.scheduler_call("cancel", job_id)
                    break
                summary = api.scheduler_call("status", job_id, timeout=30)
            except SchedulerUnavailable as e:
                now = time.monotonic()
                if gone_since is None:
                    gone_since = now
                    console.print(f"[yellow]{e}[/] — waiting up to {restart_wait_s:.0f} s for it to come back, "
                                  f"then following {job_id} on", highlight=False, soft_wrap=True)
                elif now - gone_since > restart_wait_s:
                    raise SchedulerUnavailable(f"{e}; stopped following {job_id} after waiting {restart_wait_s:.0f} s "
                                               f"— see `lorafarm status {job_id}` once it is back") from None
                time.sleep(1.0)
                continue
            if gone_since is not None:
                console.print(f"the scheduler is back: following {job_id} ({summary['state']})", highlight=False)
                gone_since = None
                last_step = 0
            p = summary.get("progress") or {}
            eta = eta_text(summary, time.time()) if summary["state"] == "QUEUED" else ""
            if eta and eta != shown_eta and not as_json:
                console.print(f"{job_id} queued: {eta}", highlight=False)
            shown_eta = eta or shown_eta
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
        for line in status_lines(summary, time.time()):
            print(line)
    return EXIT_OK


def status_lines(s: dict[str, Any], now: float) -> list[str]:
    """``lorafarm status``'s text: what the job is, its times (local) and durations, progress and metrics."""
    rows: list[tuple[str, str]] = [("job", s["job_id"]), ("name", s.get("name") or ""), ("tenant", s["tenant"]),
                                   ("state", s["state"])]
    if s.get("priority"):
        rows.append(("priority", str(s["priority"])))
    if s.get("workers"):
        rows.append(("workers", str(s["workers"])))
    submitted, started, ended = s.get("submitted_at"), s.get("started_at"), s.get("ended_at")
    if submitted:
        rows.append(("submitted", local_time(submitted)))
    if started:
        rows.append(("started", f"{local_time(started)} (queued {duration(started - submitted)})" if submitted
                     else local_time(started)))
    if ended:
        ran = f"ran {duration(ended - started)}" if started else f"after {duration(ended - (submitted or ended))}"
        rows.append(("ended", f"{local_time(ended)} ({ran})"))
    elif s["state"] == "RUNNING" and started:
        rows.append(("running for", duration(now - started)))
    elif s["state"] == "QUEUED" and submitted:
        rows.append(("queued for", duration(now - submitted)))
    if eta := eta_text(s, now):
        rows.append(("eta", eta))
    if k := s.get("pack_members"):
        rows.append(("co-trained", f"in a pack of {k} jobs on one shared base (charged 1/{k} of its workers)"))
    if s.get("attempts", 0) > 1:
        rows.append(("attempts", str(s["attempts"])))
    if p := progress_text(s.get("progress") or {}):
        rows.append(("progress", p))
    if s.get("last_checkpoint_step"):
        rows.append(("checkpoint", f"step {s['last_checkpoint_step']}"))
    if m := s.get("metrics"):
        rows.append(("metrics", ", ".join(
            f"{k} " + (" ".join(f"{a} {_num(b)}" for a, b in v.items()) if isinstance(v, dict) else _num(v))
            for k, v in m.items() if v is not None)))
    if s.get("adapter_uri"):
        rows.append(("adapter", s["adapter_uri"]))
    if s.get("reason"):
        rows.append(("reason", s["reason"]))
    width = max(len(k) for k, _ in rows) + 1
    return [f"{k + ':':<{width}} {v}" for k, v in rows if v != ""]


def eta_text(s: dict[str, Any], now: float) -> str:
    """``starts ~HH:MM:SS (in 12 min), ends ~...`` from the scheduler's estimates; "" when it has none."""
    parts = []
    for key, word in (("eta_start", "starts"), ("eta_end", "ends")):
        t = s.get(key)
        if t is not None:
            parts.append(f"{word} ~{time.strftime('%H:%M:%S', time.localtime(t))} (in {duration(t - now)})")
    return ", ".join(parts)


def _eta_cell(j: dict[str, Any]) -> str:
    t = j.get("eta_start") if j.get("state") == "QUEUED" else j.get("eta_end")
    if t is None:
        return ""
    return ("start " if j.get("state") == "QUEUED" else "end ") + time.strftime("%H:%M:%S", time.localtime(t))


def progress_text(p: dict[str, Any]) -> str:
    """A job's last step as text: step, loss, eval loss, throughput, step time, tokens, GPU memory, MFU."""
    if "step" not in p:
        return ""
    parts = [f"step {p['step']}/{p['total_steps']} ({100 * p['step'] / p['total_steps']:.0f}%)"
             if p.get("total_steps") else f"step {p['step']}"]
    for key, fmt in (("loss", "loss {:.4f}"), ("eval_loss", "eval loss {:.4f}"), ("lr", "lr {:.3g}"),
                     ("tokens_per_s", "{:,.0f} tok/s"), ("step_time_s", "{:.2f} s/step"),
                     ("tokens_seen", "{:,} tokens"), ("gpu_memory_bytes", None), ("mfu", "MFU {:.0%}")):
        if p.get(key) is None:
            continue
        if key == "gpu_memory_bytes":
            parts.append(f"GPU memory {p[key] / 2**30:.1f} GiB")
        else:
            parts.append(fmt.format(p[key]))
    return " · ".join(parts)


def local_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def list_jobs(args: argparse.Namespace, console: Console) -> int:
    if args.state is not None and args.state.upper() not in JOB_STATES:  # a usage error, before the cluster
        raise SpecError([f"--state: {args.state!r} is not a job state — use one of {', '.join(JOB_STATES)}"])
    jobs = api.scheduler_call("list", args.tenant, args.state)
    if args.json:
        emit_json(jobs)
        return EXIT_OK
    table = Table("tenant", "state", "workers", "step", "submitted", "eta")
    # job ids are what users copy into the next command: never elide them
    table.columns.insert(0, Column("job", no_wrap=True, min_width=max((len(j["job_id"]) for j in jobs), default=3)))
    for j in jobs:
        p = j.get("progress") or {}
        step = f"{p['step']}/{p['total_steps']}" if "step" in p else ""
        table.add_row(j["job_id"], j["tenant"], j["state"], str(j["workers"]), step,
                      time.strftime("%H:%M:%S", time.localtime(j["submitted_at"])), _eta_cell(j))
    Console().print(table)
    return EXIT_OK


def cancel(args: argparse.Namespace, console: Console) -> int:
    summary = api.scheduler_call("cancel", args.job)
    if args.json:
        emit_json(summary)
    else:
        print(f"{args.job}: {summary['state']}")
    return EXIT_OK


def events(args: argparse.Namespace, console: Console) -> int:
    for event in api.scheduler_call("events", args.job):
        if args.json:
            sys.stdout.write(json.dumps(event) + "\n")
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))
            print(f"{when} {event['state']:<10} {event['kind']:<16} {event['message']}", flush=True)
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
