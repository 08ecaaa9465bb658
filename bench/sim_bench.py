"""Issue 9's targets: 20,000 jobs on 1,000 GPUs from 50 tenants, replayed through lorafarm's
policy and FIFO (and SJF, an oracle that knows durations), on the same generated trace.

    .venv/bin/python bench/sim_bench.py [--jobs 20000] [--gpus 1000] [--nodes 125] [--seed 1]

Targets: the lorafarm replay takes < 60 s; against FIFO on the same trace average JCT <= 0.7x,
Jain's fairness index >= 0.9, GPU utilisation >= 90 % while work is queued (and its tenant's
quota would let it run), zero quota violations, no job waiting longer than the stated bound
(24 h). ``lorafarm-no-estimates`` is the same policy given no duration estimates, which is what
the live scheduler passes today. Prints one JSON line and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafarm.sim import ClusterSpec, Simulator, generate, markdown, summarize, tenants_yaml  # noqa: E402
from lorafarm.sim.report import DEFAULT_STARVATION_BOUND_S  # noqa: E402
from lorafarm.tenants import load_tenants  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=125, help="0 = one pool without nodes")
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--load", type=float, default=0.9, help="offered work / capacity over the arrival span")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from lorafarm.policy.baselines import POLICIES

    jobs = generate(args.jobs, args.seed, args.gpus, args.tenants, load=args.load)
    tenants = load_tenants(tenants_yaml(args.tenants, args.gpus))
    cluster = ClusterSpec(args.gpus, nodes=args.nodes or None)
    runs = [("lorafarm", True), ("fifo", True), ("sjf", True), ("lorafarm", False)]
    summaries, timing = [], {}
    for name, estimates in runs:
        label = name if estimates else f"{name}-no-estimates"
        t0, c0 = time.perf_counter(), time.process_time()
        result = Simulator(jobs, cluster, tenants, POLICIES[name], label, estimates=estimates).run()
        timing[label] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}
        summaries.append(summarize(result))
        print(f"{label}: {timing[label]['wall_s']} s wall, {timing[label]['cpu_s']} s CPU, "
              f"{result.decide_calls} policy calls", file=sys.stderr, flush=True)
    by = {s["policy"]: s for s in summaries}
    ours, fifo = by["lorafarm"], by["fifo"]
    checks = {
        "replay_under_60s": timing["lorafarm"]["wall_s"] < 60,
        "avg_jct_vs_fifo": round(ours["avg_jct_s"] / fifo["avg_jct_s"], 3),
        "avg_jct_at_most_0.7x_fifo": ours["avg_jct_s"] <= 0.7 * fifo["avg_jct_s"],
        "jain_at_least_0.9": ours["jain"] >= 0.9,
        "util_while_queued_at_least_90pct": ours["gpu_util_while_runnable"] >= 0.9,
        "zero_quota_violations": ours["quota_violations"] == 0,
        "max_wait_within_bound": ours["max_wait_s"] <= DEFAULT_STARVATION_BOUND_S,
        "no_estimates_avg_jct_vs_fifo": round(by["lorafarm-no-estimates"]["avg_jct_s"] / fifo["avg_jct_s"], 3),
    }
    print(json.dumps({"bench": "simulate", "jobs": args.jobs, "gpus": args.gpus, "nodes": args.nodes,
                      "tenants": args.tenants, "load": args.load, "seed": args.seed, "timing": timing,
                      "checks": checks,
                      "policies": {s["policy"]: {k: v for k, v in s.items() if k != "tenants"} for s in summaries}}))
    print(markdown(summaries), end="")
    print(f"| targets | ours/FIFO avg JCT {checks['avg_jct_vs_fifo']}x (<= 0.7) | Jain {ours['jain']:.3f} (>= 0.9) "
          f"| util while queued {ours['gpu_util_while_runnable']:.1%} (>= 90%) | quota violations "
          f"{ours['quota_violations']} | max wait {ours['max_wait_s'] / 3600:.1f} h (bound 24 h) "
          f"| replay {timing['lorafarm']['wall_s']} s (< 60 s) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
