"""Worker step throughput: lorafarm's recipe (DeepSpeed engine) vs Hugging Face ``Trainer`` + PEFT
vs a bare PyTorch loop + PEFT, and lorafarm on 1 vs 2 workers for the same global batch.

    .venv/bin/python bench/throughput_bench.py [--reps 5] [--steps 8] [--threads 1] [--no-scaling]

Same tiny-llama, LoRA (quickstart: r=16, all-linear), tokenized rows, batch order, micro batch
4, global batch 16 (accumulation 4), AdamW settings and torch threads in every contender. Each
contender lives in its own long-lived process (``step_worker.py``), set up once; repetitions
interleave A B C, A B C, ... (the order rotates each round) so drift on a shared machine hits
all of them. Each repetition times steps 2..N. Figures: tokens/s (wall) and tokens per
CPU-second (this process's CPU time: steadier when other work shares the cores), median,
min, max over repetitions, and the ratio lorafarm/other taken pair by pair within a round.
Targets (issue 8): >= 1.0x HF Trainer, >= 0.95x bare loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402


def interleave(gangs: dict[str, bl.Gang], reps: int, steps: int) -> dict[str, list[dict]]:
    names = list(gangs)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for g in gangs.values():
        g.run(2)  # warm-up: allocator, first-call paths
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            runs[n].append(gangs[n].run(steps))
    return runs


def summarize(runs: dict[str, list[dict]], ref: str) -> dict:
    out: dict = {}
    for n, rs in runs.items():
        out[n] = {"tokens_per_s": bl.spread([x["tokens_per_s"] for x in rs]),
                  "tokens_per_cpu_s": bl.spread([x["tokens"] / x["cpu_s_all_ranks"] for x in rs]),
                  "tokens_per_run": rs[0]["tokens"], "steps_per_run": rs[0]["steps"]}
        if n != ref:
            out[n]["ratio_vs"] = {
                "wall": bl.spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[ref], rs, strict=True)]),
                "cpu": bl.spread([(a["tokens"] / a["cpu_s_all_ranks"]) / (b["tokens"] / b["cpu_s_all_ranks"])
                                  for a, b in zip(runs[ref], rs, strict=True)]),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="steps per repetition (the first is not timed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (a job: cpus_per_worker)")
    ap.add_argument("--stage", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="zero.stage of the lorafarm side: auto (the default a job gets: 0 on one worker) or 0-3")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--store", default=str(bl.BENCH / "out" / "store"))
    args = ap.parse_args(argv)
    raw = bl.spec_dict(**{"zero.stage": args.stage})
    uri = bl.prepare_rows(raw, args.store)
    load0 = bl.loadavg()
    gangs: dict[str, bl.Gang] = {}
    try:
        for name in ("lorafarm", "hf_trainer", "bare"):
            gangs[name] = bl.Gang(name, raw, uri, threads=args.threads)
        runs = interleave(gangs, args.reps, args.steps)
    finally:
        for g in gangs.values():
            g.close()
    res = summarize(runs, "lorafarm")
    rec = {"bench": "step_throughput", "stage": args.stage, "threads": args.threads, "reps": args.reps,
           "steps": args.steps, "loadavg_before": load0, "loadavg_after": bl.loadavg(), "results": res,
           "targets": {"vs_hf_trainer": 1.0, "vs_bare": 0.95}}
    bl.emit(rec)
    for n in ("hf_trainer", "bare"):
        w, c = res[n]["ratio_vs"]["wall"], res[n]["ratio_vs"]["cpu"]
        print(f"lorafarm / {n}: wall {w['median']:.3f}x [{w['min']:.3f}-{w['max']:.3f}], "
              f"per CPU-s {c['median']:.3f}x [{c['min']:.3f}-{c['max']:.3f}]")

    if not args.no_scaling:
        gangs = {}
        try:
            gangs["1w"] = bl.Gang("lorafarm", raw, uri, world=1, threads=args.threads)
            raw2 = bl.spec_dict(**{"zero.stage": args.stage, "resources.workers": 2})
            gangs["2w"] = bl.Gang("lorafarm", raw2, uri, world=2, threads=args.threads)
            sruns = interleave(gangs, max(3, args.reps - 2), args.steps)
        finally:
            for g in gangs.values():
                g.close()
        sres = summarize(sruns, "2w")
        bl.emit({"bench": "scaling", "stage": args.stage, "threads_per_worker": args.threads,
                 "global_batch": raw["training"]["global_batch_size"], "loadavg_after": bl.loadavg(),
                 "results": sres, "speedup_2w_over_1w_wall": sres["1w"]["ratio_vs"]["wall"]["median"]})
        print(f"2 workers / 1 worker: {sres['1w']['ratio_vs']['wall']['median']:.3f}x tokens/s (wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
