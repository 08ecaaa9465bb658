"""Issue 15: what ``resources.min_workers`` buys when nodes fail. The same trace of jobs on a
simulated 1,000-GPU cluster (125 nodes × 8 GPUs), run twice with the same node failures: every
job rigid, then every job elastic (min_workers = workers / 2), through
:mod:`lorafarm.sim.failures` (the scheduler's own placement and elastic-size code).

    .venv/bin/python bench/elastic_bench.py [--jobs 600] [--seed 1] [--mtbf-days 30] [--repair-h 4]

Failure rate (documented default): each node fails once per 30 days on average (exponential),
so ~4 node failures a day on 125 nodes, and is repaired in 4 h; jobs checkpoint every 30 min of
their run time and take 3 min to restart. Reported: average JCT, GPU utilisation (held, and
useful = finished jobs' work), and time from a node loss to the job training again (p50/p95).
Prints one JSON line and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafarm.sim.failures import FailureModel, make_trace, simulate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mtbf-days", type=float, default=30.0)
    p.add_argument("--repair-h", type=float, default=4.0)
    p.add_argument("--load", type=float, default=0.9)
    a = p.parse_args()
    model = FailureModel(node_mtbf_s=a.mtbf_days * 86400, repair_s=a.repair_h * 3600)
    out = {"shape": {"gpus": model.nodes * model.gpus_per_node, "nodes": model.nodes, "jobs": a.jobs,
                     "mtbf_days": a.mtbf_days, "repair_h": a.repair_h, "load": a.load, "seed": a.seed}}
    for name, elastic in (("rigid", False), ("elastic", True)):
        t0 = time.process_time()
        out[name] = simulate(make_trace(a.jobs, a.seed, model, a.load, elastic), model, seed=a.seed)
        out[name]["cpu_s"] = round(time.process_time() - t0, 1)
    r, e = out["rigid"], out["elastic"]
    out["ratios"] = {"avg_jct": e["avg_jct_h"] / r["avg_jct_h"], "gpu_useful": e["gpu_useful"] / r["gpu_useful"],
                     "recovery_p50": (e["recovery_p50_min"] / r["recovery_p50_min"]) if r["recovery_p50_min"] else None}
    print(json.dumps(out))
    print("\n| run | finished | node failures | avg JCT (h) | GPUs held | GPUs useful | loss→training p50 (min) "
          "| p95 (min) | resizes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("rigid", "elastic"):
        s = out[name]
        print(f"| {name} | {s['finished']}/{s['jobs']} | {s['node_failures']} | {s['avg_jct_h']:.2f} | "
              f"{s['gpu_busy']:.1%} | {s['gpu_useful']:.1%} | {s['recovery_p50_min']:.0f} | "
              f"{s['recovery_p95_min']:.0f} | {s['resizes']} |")


if __name__ == "__main__":
    main()
