"""Admission at scale: ``decide`` and a whole ``SchedulerCore`` tick with 10,000 queued jobs
from 100 tenants, and how many jobs an idle cluster admits per second.

    .venv/bin/python bench/policy_bench.py [--queued 10000] [--tenants 100] [--seconds 3]

Issue 18's targets, through ``SchedulerCore`` (real core, real records, estimates on; fake
clock, launcher and capacity, a store on /dev/shm when there is one): one tick with 10,000
queued jobs from 100 tenants on a busy cluster takes <= 5 ms (median CPU time of the ticks), and
an idle cluster admits >= 10,000 jobs/s (10,000 queued, all fit: CPU time from the first tick
until all are RUNNING, the median of three fresh cores; wall figures beside them; the starts'
records are on disk in one batch file by then, and the CPU time to give each its own file
afterwards, a few hundred a tick, is reported beside it). Both print a met/missed verdict.

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


def core_bench(queued: int, tenants: int, ticks: int = 20, states: tuple[str, ...] = ("busy", "idle"),
               idle_runs: int = 3) -> dict:
    """Tick time (busy cluster) and admissions/s (idle cluster, the median of ``idle_runs``
    fresh cores: one run on a shared machine swings by a third) through a real SchedulerCore."""
    import copy
    import statistics
    import tempfile

    import yaml

    from lorafarm.scheduler.core import SchedulerCore
    from lorafarm.scheduler.seams import cluster_state
    from lorafarm.scheduler.state import JobRecord, JobState
    from lorafarm.storage import Store

    class Clock:
        t = 1_000_000.0

        def now(self) -> float:
            return self.t

    from lorafarm.events import RunOutcome, RunState

    class Launcher:
        ending: set[str] = set()  # job ids whose runs end at the next poll

        def start(self, job_id, spec, store_root, placement=()): pass
        def poll(self, job_id):
            return RunOutcome(RunState.SUCCEEDED, adapter_uri="mem://a") if job_id in self.ending else None
        def preempt(self, job_id): pass
        def kill(self, job_id): return True
        def kill_leftover(self, job_id): pass
        def release(self, pgs): pass
        def sweep(self): return 0

    class Capacity:
        def __init__(self, cpus: float):
            self.cpus = cpus

        def cluster(self, running):
            return cluster_state(self.cpus, 0.0, running)

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs/quickstart.yaml").read_text())
    names = [f"t{i:03d}" for i in range(tenants)]
    text = "policy: {aging_per_hour: 100}\ntenants:\n  default: {weight: 1}\n" + "".join(
        f"  {n}: {{weight: {1 + i % 3}}}\n" for i, n in enumerate(names))
    rng = random.Random(0)
    out: dict = {}
    runs = [("busy", 4)] * ("busy" in states) + [("idle", queued + 1)] * (idle_runs if "idle" in states else 0)
    for label, free in runs:
        root = tempfile.mkdtemp(prefix="policy-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        running = 500 if label == "busy" else 0
        core = SchedulerCore(Store.open(root), load_tenants(text), Clock(), Launcher(), Capacity(running + free))
        for i in range(running + queued):
            spec = copy.deepcopy(base)
            spec.update(tenant=rng.choice(names), name=f"j{i}")
            spec["training"]["max_steps"] = rng.choice([10, 60, 200, 1000])
            spec["resources"].update(workers=1, cpus_per_worker=1.0)  # as the record says: one worker, one CPU
            r = JobRecord(job_id=f"j{i:05d}", tenant=spec["tenant"], name=spec["name"], spec=spec, workers=1,
                          cpus_per_worker=1.0, submitted_at=Clock.t - rng.uniform(0, 6 * 3600),
                          state=JobState.QUEUED)
            core.adopt(r)
        core.heap.grew(len(core.jobs))  # as after a recovery: the records loaded are frozen before the first tick
        if label == "busy":
            for r in list(core.jobs.values())[:running]:
                core._start(r, Clock.t)
            times, cpu = [], []
            for _ in range(ticks):
                t0, c0 = time.perf_counter(), time.process_time()
                core.tick()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            ms = 1000 * statistics.median(cpu)  # CPU time: on a shared machine wall time counts others' work
            out["tick_ms"] = round(ms, 3)
            out["tick_wall_ms"] = round(1000 * statistics.median(times), 3)
            out["tick_target_5ms"] = "met" if ms <= 5.0 else "missed"
            # ticks in which one running job ends (after some steps: the estimator learns) and
            # the freed capacity goes to the queue, the clock a second on each time
            ended = []
            for k in range(ticks):
                victim = next(j for j in core.index.running.values() if j.job_id not in Launcher.ending)
                core.estimates.step(victim, 5, 0.3 + 0.01 * k, 10)
                core.estimates.step(victim, 6, 0.3 + 0.01 * k, 10)
                Launcher.ending = {victim.job_id}
                Clock.t += 1.0
                c0 = time.process_time()
                core.tick()
                ended.append(time.process_time() - c0)
            out["tick_after_an_end_ms"] = round(1000 * statistics.median(ended), 3)
            out["tick_after_an_end_max_ms"] = round(1000 * max(ended), 3)
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            while len(core.index.queue):
                core.tick()
            wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            out.setdefault("idle_runs", []).append({"admissions_per_s": round(queued / cpu_s, 1),
                                                    "admissions_per_wall_s": round(queued / wall, 1)})
            # the starts' records went out as one batch file; their own files follow a few hundred
            # a tick (RecordStore.settle): that deferred cost, all of it, measured apart
            c0 = time.process_time()
            while core.records.unfiled:
                core.records.settle()
            out["idle_records_filed_later_ms"] = round(1000 * (time.process_time() - c0), 1)
            assert all(j.state is JobState.RUNNING for j in core.jobs.values())
    if "idle" in states:
        rates = sorted(r["admissions_per_s"] for r in out["idle_runs"])
        out["admitted"] = queued
        out["admissions_per_s"] = statistics.median(rates)  # per CPU-second, as the tick; median of the runs
        out["admissions_per_s_best"] = rates[-1]
        out["admissions_target_10000_per_s"] = "met" if out["admissions_per_s"] >= 10_000 else "missed"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    queued, tenants, names, rng = workload(args.queued, args.tenants)
    running, busy = busy_cluster(names, rng)
    idle = ClusterState.from_nodes([NodeState(f"n{n:03d}", 96.0, 8.0, 96.0, 8.0) for n in range(125)])
    core = core_bench(args.queued, args.tenants)
    print(json.dumps({"bench": "scheduler_core_tick", "queued": args.queued, "tenants": args.tenants,
                      "python": platform.python_version(), **core}))
    print(f"| SchedulerCore | {args.queued} queued / {args.tenants} tenants | tick {core['tick_ms']:.2f} ms "
          f"(target <= 5 ms: {core['tick_target_5ms']}) | idle cluster admits {core['admissions_per_s']:,.0f} jobs/s "
          f"(median of {len(core['idle_runs'])}, best {core['admissions_per_s_best']:,.0f}; target >= 10,000/s: "
          f"{core['admissions_target_10000_per_s']}; their records filed later: "
          f"{core['idle_records_filed_later_ms']:,.0f} ms) |")
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
