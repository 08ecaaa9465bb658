"""What the scheduler path costs a job: ``lorafarm submit --wait`` through a running scheduler vs
``lorafarm run`` straight on the same Ray cluster, the same 1-step job, interleaved (A B A B ...).

A 1-step job is all start-up (data cache hit, worker group, DeepSpeed, one step, verify,
publish), so the difference of the medians is the scheduler's overhead: submit RPC, record
writes, the admission tick, the runner actor. Also times each phase from the job's events
(submitted → started → ended). Starts its own Ray head on free ports in its own process group
(``tests/ray_head.py``), so no other Ray cluster on the machine is touched.

    python bench/scheduler_bench.py [--reps 3] [--workers 1]

Prints ``BENCH {json}`` lines (bench/run_all.py format).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

sys.path.insert(0, str(bl.REPO / "tests"))
from ray_head import RayHead  # noqa: E402


def _spec(tmp: Path, workers: int) -> Path:
    import yaml

    spec = yaml.safe_load((bl.REPO / "jobs/quickstart.yaml").read_text())
    spec["name"] = "sched-bench"
    spec["dataset"]["uri"] = str(bl.REPO / "jobs/data/pirate_chat.jsonl")
    spec["training"].update(max_steps=1, warmup_steps=0, eval_every_steps=0, seq_len=64, global_batch_size=4,
                            micro_batch_size=4 // workers)
    spec["resources"]["workers"] = workers
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _timed(head: RayHead, *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = head.lorafarm(*args, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"lorafarm {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0, p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lf-sched-bench-"))
    head = RayHead(tmp, num_cpus=4, env={"LORAFARM_TEST_STEP_FLOOR_S": "0"})  # no test pacing: timed as users run
    store = str(tmp / "store")
    try:
        head.lorafarm("serve", "--store", store, check=True)
        spec = str(_spec(tmp, args.workers))
        _timed(head, "run", spec, "--store", store)  # warm-up: tokenization cache, imports, page cache
        via, direct, phases = [], [], []
        for _ in range(args.reps):
            t, out = _timed(head, "submit", spec, "--wait")
            via.append(t)
            job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
            status = head.lorafarm_json("status", job)
            phases.append({"queued_s": status["started_at"] - status["submitted_at"],
                           "running_s": status["ended_at"] - status["started_at"]})
            direct.append(_timed(head, "run", spec, "--store", store)[0])
        bl.emit({
            "bench": "scheduler_overhead",
            "what": f"1-step job, {args.workers} worker(s): `submit --wait` via the scheduler vs `run` direct",
            "via_scheduler_s": bl.spread(via),
            "direct_run_s": bl.spread(direct),
            "ratio_median": statistics.median(a / b for a, b in zip(via, direct, strict=True)),
            "overhead_s_median": statistics.median(via) - statistics.median(direct),
            "queued_s_median": statistics.median(p["queued_s"] for p in phases),
            "running_s_median": statistics.median(p["running_s"] for p in phases),
            "reps": args.reps,
            "load": bl.loadavg(),
        })
    finally:
        head.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
