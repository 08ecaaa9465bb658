"""Admission decisions per second: ``decide`` with 10,000 queued jobs from 100 tenants.

    .venv/bin/python bench/policy_bench.py [--queued 10000] [--tenants 100] [--seconds 3]

Two cluster states: *busy* (1,000 GPUs on 125 nodes, 500 jobs running, a few GPUs free: the
usual case, a handful of starts and a reservation) and *idle* (everything free: hundreds of
starts in one call). Reports decide() calls/s, queued jobs ranked/s (every call ranks the whole
queue) and jobs considered/s (popped in service order: started, skipped or blocked). Issue 4's
target is >= 10,000 admission decisions/s. Rates are per CPU-second of this process (wall-clock
rates, which count other work on a shared machine, are in ``wall_calls_per_s``). Prints one
JSON line and one Markdown line per state.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafarm.policy import ClusterState, JobRequest, NodeState, RunningJob, decide  # noqa: E402
from lorafarm.tenants import load_tenants  # noqa: E402


def workload(queued: int, tenants: int, seed: int = 0):
    rng = random.Random(seed)
    names = [f"t{i:03d}" for i in range(tenants)]
    zipf = [1.0 / (i + 1) for i in range(tenants)]
    shapes = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8), (8, 8)]
    classes = ["low", "normal", "normal", "normal", "high"]
    q = []
    for i in range(queued):
        w, g = rng.choice(shapes)
        q.append(JobRequest(f"q{i:05d}", rng.choices(names, zipf)[0], w, 4.0, float(g), rng.choice(classes),
                            rng.uniform(0, 6 * 3600), rng.choice([None, rng.uniform(60, 36000)])))
    tenants_text = "policy: {aging_per_hour: 100}\ntenants:\n  default: {weight: 1, quota: {gpus: 200}}\n" + "".join(
        f"  {n}: {{weight: {1 + i % 3}, quota: {{gpus: {100 + 20 * (i % 5)}}}}}\n" for i, n in enumerate(names))
    return q, load_tenants(tenants_text), names, rng


def busy_cluster(names, rng, free_per_node=(0, 0, 1, 2)):
    running, nodes = [], []
    for n in range(125):
        free = rng.choice(free_per_node)
        nodes.append(NodeState(f"n{n:03d}", 96.0, 8.0, 96.0 - 4 * (8 - free), float(free)))
        for k in range(8 - free):
            running.append(RunningJob(f"r{n}-{k}", rng.choice(names), 1, 4.0, 1.0, "normal", 0.0, 100.0,
                                      None, ((f"n{n:03d}", 1),)))
    return running, ClusterState.from_nodes(nodes)


def measure(queued, running, cluster, tenants, seconds: float) -> dict:
    now = 6 * 3600 + 1800.0
    decide(queued, running, cluster, tenants, now)  # warm up
    calls = considered = started = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds or calls < 3:
        d = decide(queued, running, cluster, tenants, now)
        calls += 1
        considered += d.considered
        started += len(d.start)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds of this process: on a shared machine wall time also counts other people's work
    return {"calls_per_s": calls / cpu, "ms_per_call": 1000 * cpu / calls, "wall_calls_per_s": calls / wall,
            "queued_ranked_per_s": calls * len(queued) / cpu, "considered_per_s": considered / cpu,
            "considered_per_call": considered / calls, "started_per_call": started / calls}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    queued, tenants, names, rng = workload(args.queued, args.tenants)
    running, busy = busy_cluster(names, rng)
    idle = ClusterState.from_nodes([NodeState(f"n{n:03d}", 96.0, 8.0, 96.0, 8.0) for n in range(125)])
    for label, run, cluster in (("busy", running, busy), ("idle", [], idle)):
        r = measure(queued, run, cluster, tenants, args.seconds)
        out = {"bench": "policy_decide", "state": label, "queued": len(queued), "tenants": args.tenants,
               "running": len(run), "gpus": cluster.total_gpus, "free_gpus": cluster.free_gpus,
               "python": platform.python_version(), **{k: round(v, 2) for k, v in r.items()}}
        print(json.dumps(out))
        print(f"| {label} | {len(queued)} queued / {args.tenants} tenants | {r['calls_per_s']:.1f} decide/s "
              f"({r['ms_per_call']:.1f} ms) | {r['queued_ranked_per_s']:,.0f} queued jobs ranked/s "
              f"| {r['considered_per_s']:,.0f} considered/s ({r['considered_per_call']:.0f}/call, "
              f"{r['started_per_call']:.0f} started) | target >= 10,000/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
