"""Co-training (issue 20): K jobs' adapters trained as one pack on one shared base vs the same
K jobs as separate concurrent processes vs one after another, same machine, one run.

    .venv/bin/python bench/cotrain_bench.py [--jobs 4] [--steps 12] [--seq 256] [--micro 4]

Each job: the quickstart's tiny-llama, its own LoRA (ranks 4/8/16/…, q,v or all-linear, its own
learning rate and init seed), micro batch ``--micro`` rows of ``--seq`` random tokens a step,
AdamW, clipping by its own norm — the training step of ``tests/test_cotrain_routing.py`` (a plain
PyTorch loop: the pack's core, not yet DeepSpeed through the recipe). Separate jobs run as K
processes at once with ``cores / K`` threads each (at least 1); the pack as one process with all
the cores' threads; sequential as K processes one after another with all threads. Reported:
total tokens/s (all jobs' label tokens over the wall time from the first step to the last), the
sum of the processes' peak RSS (``ru_maxrss``), and the ratios pack / separate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

RANKS = (4, 8, 16, 2, 32, 8, 4, 16)
TARGETS = (["q_proj", "v_proj"], "all-linear")


def job(i: int) -> dict:
    return {"name": f"job{i}", "r": RANKS[i % len(RANKS)], "targets": TARGETS[i % 2], "lr": 1e-3 * (1 + i),
            "seed": 100 + i}


def child(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from lorafarm.cotrain import member_loss, member_parameters, new_pack, routed
    from lorafarm.model import apply_lora
    from lorafarm.model.tiny import build_model
    from lorafarm.spec import LoraSpec

    torch.set_num_threads(cfg["threads"])
    jobs = cfg["jobs"]
    torch.manual_seed(0)
    base = build_model()
    specs = {j["name"]: (LoraSpec(r=j["r"], alpha=2 * j["r"], dropout=0.0, target_modules=j["targets"]), j["seed"])
             for j in jobs}
    if len(jobs) == 1:
        (name, (lora, seed)), = specs.items()
        model = apply_lora(base, lora, seed=seed)
        params = {name: [p for p in model.parameters() if p.requires_grad]}
    else:
        model = new_pack(base, specs)
        params = {j["name"]: member_parameters(model, j["name"]) for j in jobs}
    model.train()
    opts = {j["name"]: torch.optim.AdamW(params[j["name"]], lr=j["lr"]) for j in jobs}
    g = torch.Generator().manual_seed(1)
    b, t = cfg["micro"] * len(jobs), cfg["seq"]
    members = [j["name"] for j in jobs for _ in range(cfg["micro"])]
    tokens, t0, started = 0, 0.0, 0.0
    for step in range(cfg["steps"] + 1):
        if step == 1:  # the first step (allocations, optimizer state) is not timed
            t0, started = time.perf_counter(), time.time()
        ids = torch.randint(4, 320, (b, t), generator=g)
        labels = torch.roll(ids, -1, 1)
        labels[:, -1] = -100
        with routed(model, members) if len(jobs) > 1 else contextlib.nullcontext():
            logits = model(input_ids=ids, use_cache=False).logits.float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none").sum(1)
        per = {j["name"]: int(t - 1) * cfg["micro"] for j in jobs}
        for o in opts.values():
            o.zero_grad()
        member_loss(ce, members, per).backward()
        for name, o in opts.items():
            torch.nn.utils.clip_grad_norm_(params[name], 1.0)
            o.step()
        if step >= 1:
            tokens += sum(per.values())
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": wall, "started": started, "ended": time.time(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(jobs: list[dict], threads: int, args) -> subprocess.Popen:
    cfg = {"jobs": jobs, "threads": threads, "steps": args.steps, "seq": args.seq, "micro": args.micro}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE,
                            text=True, env=env)


def result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode:
        raise SystemExit(f"child failed ({p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    cores = os.cpu_count() or 1
    jobs = [job(i) for i in range(args.jobs)]
    t = time.perf_counter()
    pack = result(spawn(jobs, cores, args))
    pack_wall = time.perf_counter() - t
    t = time.perf_counter()
    procs = [spawn([j], max(1, cores // len(jobs)), args) for j in jobs]
    separate = [result(p) for p in procs]
    separate_wall = time.perf_counter() - t
    t = time.perf_counter()
    sequential = [result(spawn([j], cores, args)) for j in jobs]
    sequential_wall = time.perf_counter() - t
    # concurrent jobs: tokens over the span (wall clock, shared by the processes) from the first
    # timed step of any to the end of the last
    sep_tps = sum(r["tokens"] for r in separate) / (max(r["ended"] for r in separate) - min(r["started"] for r in separate))
    seq_tps = sum(r["tokens"] for r in sequential) / sum(r["seconds"] for r in sequential)
    pack_tps = pack["tokens"] / pack["seconds"]
    out = {"bench": "cotrain", "jobs": args.jobs, "steps": args.steps, "seq": args.seq, "micro": args.micro,
           "cores": cores, "loadavg": bl.loadavg(),
           "pack": {"tokens_per_s": pack_tps, "peak_rss_mb": pack["peak_rss_mb"], "process_wall_s": pack_wall},
           "separate": {"tokens_per_s": sep_tps, "peak_rss_mb": sum(r["peak_rss_mb"] for r in separate),
                        "process_wall_s": separate_wall},
           "sequential": {"tokens_per_s": seq_tps, "peak_rss_mb": max(r["peak_rss_mb"] for r in sequential),
                          "process_wall_s": sequential_wall}}
    out["pack_over_separate"] = {"tokens_per_s": pack_tps / sep_tps,
                                 "peak_rss": pack["peak_rss_mb"] / out["separate"]["peak_rss_mb"]}
    out["pack_over_sequential_tokens_per_s"] = pack_tps / seq_tps
    bl.emit(out)
    r = out["pack_over_separate"]
    print(f"| {args.jobs} jobs co-trained vs separate concurrent | tokens/s {r['tokens_per_s']:.3f}× (target ≥ 1.0×: "
          f"{'met' if r['tokens_per_s'] >= 1.0 else 'missed'}) | peak RSS {r['peak_rss']:.3f}× (target ≤ 0.5×: "
          f"{'met' if r['peak_rss'] <= 0.5 else 'missed'}) | vs one after another: tokens/s "
          f"{out['pack_over_sequential_tokens_per_s']:.3f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
