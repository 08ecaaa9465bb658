"""``lorafarm simulate``: replay a trace (or a generated workload) through the scheduler's policy
and the FIFO/SJF baselines, with a simulated clock. Exit 0, or 2 for bad input."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from .output import EXIT_OK

POLICY_NAMES = ("lorafarm", "fifo", "sjf")
MAX_GPUS = 10_000_000
MAX_NODES = 1_000_000
MAX_GENERATE = 10_000_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="replay a job trace through the scheduling policy (and FIFO/SJF) at cluster scale",
        description="Discrete-event replay of a job trace through lorafarm's own policy (the code the scheduler "
                    "runs) and the FIFO and SJF baselines. Prints a JSON summary line per policy and a Markdown "
                    "table; with --out also writes summary.json, summary.md and PNG plots.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", metavar="FILE",
                     help="trace file: lorafarm CSV/Parquet, Philly cluster_job_log JSON, Helios cluster_log.csv, "
                          "or Alibaba PAI pai_task_table.csv (or its directory); see lorafarm/sim/trace.py")
    src.add_argument("--generate", type=int, metavar="N", help="generate N synthetic jobs instead (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed for --generate (default 0)")
    p.add_argument("--gpus", type=float, required=True, metavar="G", help="GPUs in the simulated cluster")
    p.add_argument("--nodes", type=int, metavar="K", help="split the GPUs evenly over K nodes (default: one pool)")
    p.add_argument("--tenants", required=True, metavar="FILE", help="tenants file (quotas, weights, classes)")
    p.add_argument("--policy", action="append", choices=POLICY_NAMES, metavar="{lorafarm,fifo,sjf}",
                   help="policy to replay (repeatable; default: all three)")
    p.add_argument("--out", metavar="DIR", help="write summary.json, summary.md and PNG plots here")
    p.set_defaults(handler=simulate)


def simulate(args: argparse.Namespace, console: Console) -> int:
    import math

    from ..errors import SpecError
    from ..sim import ClusterSpec, TraceError, dumps, generate, markdown, read_trace, run_policies
    from ..sim.report import plot, tenants_markdown
    from ..spec import load_tenants

    problems = []
    if not math.isfinite(args.gpus) or args.gpus <= 0 or args.gpus > MAX_GPUS:
        problems.append(f"--gpus: {args.gpus:g} must be a finite number > 0 and <= {MAX_GPUS:,} — give the "
                        "cluster's GPU count")
    if args.nodes is not None and not 1 <= args.nodes <= MAX_NODES:
        problems.append(f"--nodes: {args.nodes} must be between 1 and {MAX_NODES:,} — or leave it out for one pool")
    if args.generate is not None and not 1 <= args.generate <= MAX_GENERATE:
        problems.append(f"--generate: {args.generate} must be between 1 and {MAX_GENERATE:,} — give a number of jobs")
    if not 0 <= args.seed <= 2**63 - 1:
        problems.append(f"--seed: {args.seed} must be between 0 and 2**63-1")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        problems.append(f"--out: {args.out} is a file, not a directory — give a directory for the summary and plots")
    if not Path(args.tenants).is_file():
        problems.append(f"--tenants: {args.tenants}: no such file — give the tenants YAML file")
    if problems:
        raise SpecError(problems)
    tenants = load_tenants(Path(args.tenants))
    try:
        jobs = read_trace(args.trace) if args.trace else generate(args.generate, args.seed, args.gpus)
    except TraceError as e:
        raise SpecError([str(e)]) from None
    policies = list(dict.fromkeys(args.policy or POLICY_NAMES))
    cluster = ClusterSpec(gpus=args.gpus, nodes=args.nodes)
    t0 = time.perf_counter()
    results, summaries = run_policies(jobs, cluster, tenants, policies)
    wall = time.perf_counter() - t0
    import json

    for s in summaries:
        sys.stdout.write(json.dumps(s, sort_keys=True) + "\n")
    table = markdown(summaries)
    sys.stdout.write(table)
    sys.stdout.flush()
    console.print(f"replayed {len(jobs)} jobs × {len(policies)} policies on {args.gpus:g} GPUs in {wall:.1f} s",
                  highlight=False)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(dumps(summaries))
        (out / "summary.md").write_text(table + "\n" + "\n".join(tenants_markdown(s) for s in summaries))
        written = plot(results, out)
        console.print(f"wrote {out / 'summary.json'}, {out / 'summary.md'} and {len(written)} plots", highlight=False)
    return EXIT_OK
