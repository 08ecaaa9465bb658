"""Operator and tenant views: ``lorafarm plot`` (from the store, no scheduler needed) and
``lorafarm top`` (a live table from the scheduler)."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from .. import api
from ..errors import SpecError
from .args import STORE_HELP
from .output import EXIT_OK, emit_json

MAX_INTERVAL_S = 3600.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="train/eval loss and tokens/s over steps of a job, as a PNG")
    p.add_argument("job", help="job id")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--tenant", help="the job's tenant (default: search every tenant of the store)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=plot)

    p = sub.add_parser("top", help="live table of tenants and running jobs (step, loss, tokens/s, ETA)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true",
                   help="JSON instead of a table: one object (with --once) or one line per refresh")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--tenant", help="only this tenant")
    p.set_defaults(handler=top)


def plot(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from ..ops.history import load_job_history
    from ..ops.plot import lines_by_label, plot_history

    out = Path(args.output).expanduser()
    if not args.output.lower().endswith(".png"):
        raise SpecError([f"-o {args.output}: the plot is a PNG — name the file *.png"])
    if out.is_dir():
        raise SpecError([f"-o {args.output}: is a directory — give a file name such as {out / 'loss.png'}"])
    if not out.parent.is_dir():
        raise SpecError([f"-o {args.output}: directory {out.parent} does not exist — create it or give another path"])
    history = load_job_history(args.job, args.store, args.tenant)
    if not history.steps:
        console.print(f"[yellow]{args.job}: history.jsonl has no steps yet; writing an empty plot", highlight=False)
    fig = plot_history(history, args.output)
    lines = lines_by_label(fig)
    if args.json:
        emit_json({"job_id": args.job, "path": args.output, "steps": len(history.steps),
                   "eval_points": len(lines.get("eval loss", ([], []))[0]), "curves": sorted(lines)})
    else:
        console.print(f"wrote {args.output} ({len(history.steps)} steps)", highlight=False)
    return EXIT_OK


def top(args: argparse.Namespace, console: Console) -> int:
    import math

    from ..ops.top import render, snapshot

    if not math.isfinite(args.interval) or not 0 < args.interval <= MAX_INTERVAL_S:
        raise SpecError([f"--interval {args.interval}: must be a finite number of seconds > 0 and <= "
                         f"{MAX_INTERVAL_S:g} — e.g. --interval 2"])

    def take() -> dict:
        return snapshot(api.scheduler_call("tenants"), api.scheduler_call("list", args.tenant, "RUNNING"),
                        tenant=args.tenant)

    if args.once:
        snap = take()
        if args.json:
            emit_json(snap)
        else:
            Console().print(render(snap))
        return EXIT_OK
    try:
        if args.json:
            while True:
                emit_json(take())
                time.sleep(args.interval)
        from rich.live import Live

        with Live(render(take()), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(take()), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK

