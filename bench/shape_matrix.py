"""The shape matrix (issue 19): lorafarm's recipe vs HF ``Trainer`` + PEFT vs a bare PyTorch +
PEFT loop on every shape a user may pick, paired in one run, with a met/missed verdict per cell.

    .venv/bin/python bench/shape_matrix.py [--cells all|NAME,...] [--full] [--reps 3] [--steps 17]

The base cell is the shape of issue 19's report: one worker (``zero.stage: auto`` = 0), micro
batch 4, no accumulation, rows of text long enough that every row is full (seq 256), no packing,
LoRA r=8 on q,v, dropout 0, 2 torch threads per process. Every other cell changes one axis from
it: accumulation 4; 1 thread; packing on (short chat examples packed into rows: the packed
attention path) and the same chat data unpacked (padded rows); all-linear targets; seq 128
and 512; and 2 workers (ZeRO-0, ZeRO-2; 1 thread each, gloo) against HF ``Trainer`` DDP on 2
processes over gloo with the same global batch. ``--full`` runs the whole 32-cell product of the
five single-process axes instead of one axis at a time (about 5x longer).

Per cell: each contender in its own long-lived process (``benchlib.Gang``), set up once, warm-up
2 steps, then ``--reps`` rounds of ``--steps`` steps (the first step of each run is not timed,
so 16 timed steps by default), rounds interleaved with the order rotating; the ratio
lorafarm/baseline is taken within a round (paired), median [min-max] over rounds, on wall
time and on CPU time (steadier when other work shares the cores). Targets: >= 1.0x HF Trainer
+ PEFT and >= 0.97x the bare loop in every cell; 2 workers >= 1.0x HF DDP. A cell is "met" when
the median paired wall ratio meets the target; the CPU-time ratio is printed beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
from throughput_bench import interleave, summarize  # noqa: E402

TARGETS = {"hf_trainer": 1.0, "bare": 0.97, "hf_ddp": 1.0}
BASE = {"accum": 1, "threads": 2, "packing": False, "data": "text", "targets": "qv", "seq": 256, "workers": 1,
        "stage": "auto"}


def cells(full: bool) -> dict[str, dict[str, Any]]:
    """Cell name -> shape (BASE with some axes changed)."""
    if full:
        out = {}
        for accum, threads, packing, targets, seq in itertools.product((1, 4), (1, 2), (False, True), ("qv", "all"),
                                                                       (128, 512)):
            name = f"acc{accum}-t{threads}-{'pack' if packing else 'nopack'}-{targets}-s{seq}"
            out[name] = {**BASE, "accum": accum, "threads": threads, "packing": packing,
                         "data": "chat" if packing else "text", "targets": targets, "seq": seq}
    else:
        out = {
            "base (issue 19)": dict(BASE),
            "accum 4": {**BASE, "accum": 4},
            "1 thread": {**BASE, "threads": 1},
            "packing on (chat)": {**BASE, "packing": True, "data": "chat"},
            "packing off (chat, padded)": {**BASE, "data": "chat"},
            "all-linear": {**BASE, "targets": "all"},
            "seq 128": {**BASE, "seq": 128},
            "seq 512": {**BASE, "seq": 512},
        }
    out["2 workers ZeRO-0 vs HF DDP"] = {**BASE, "threads": 1, "workers": 2, "stage": 0}
    out["2 workers ZeRO-2 vs HF DDP"] = {**BASE, "threads": 1, "workers": 2, "stage": 2}
    return out


def long_text_data(path: Path, n: int = 96, chars: int = 3000) -> str:
    """``n`` text examples of ``chars`` characters (byte-level tokenizer: every row full up to seq 2048)."""
    if not path.exists():
        import random

        rng = random.Random(0)
        words = ["the", "ship", "sails", "at", "dawn", "with", "the", "tide", "and", "the", "crew", "sings", "of", "gold", "and", "rum", "and", "far", "islands"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for _ in range(n):
                text, out = "", []
                while len(text) < chars:
                    out.append(rng.choice(words))
                    text = " ".join(out)
                f.write(json.dumps({"text": text[:chars]}) + "\n")
    return str(path)


def spec_for(shape: dict[str, Any], text_uri: str) -> dict[str, Any]:
    mb = 4
    raw = bl.spec_dict(**{
        "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.0,
        "lora.target_modules": ["q_proj", "v_proj"] if shape["targets"] == "qv" else "all-linear",
        "training.micro_batch_size": mb, "training.global_batch_size": mb * shape["accum"] * shape["workers"],
        "training.seq_len": shape["seq"], "training.packing": shape["packing"],
        "zero.stage": shape["stage"], "resources.workers": shape["workers"],
    })
    if shape["data"] == "text":
        raw["dataset"] = {"uri": text_uri, "format": "text", "eval_fraction": 0.0}
    return raw


def run_cell(name: str, shape: dict[str, Any], text_uri: str, store: str, reps: int, steps: int) -> dict[str, Any]:
    raw = spec_for(shape, text_uri)
    uri = bl.prepare_rows(raw, store)
    w, th = shape["workers"], shape["threads"]
    gangs: dict[str, bl.Gang] = {}
    try:
        gangs["lorafarm"] = bl.Gang("lorafarm", raw, uri, world=w, threads=th)
        if w == 1:
            gangs["hf_trainer"] = bl.Gang("hf_trainer", raw, uri, threads=th)
            gangs["bare"] = bl.Gang("bare", raw, uri, threads=th)
        else:
            gangs["hf_ddp"] = bl.Gang("hf_trainer", raw, uri, world=w, threads=th)
        load0 = bl.loadavg()
        runs = interleave(gangs, reps, steps)
    finally:
        for g in gangs.values():
            g.close()
    res = summarize(runs, "lorafarm")
    verdicts = {}
    for other in gangs:
        if other == "lorafarm":
            continue
        wall, cpu = res[other]["ratio_vs"]["wall"], res[other]["ratio_vs"]["cpu"]
        verdicts[other] = {"wall": wall, "cpu": cpu, "target": TARGETS[other], "met": wall["median"] >= TARGETS[other]}
    step_ms = {n: 1000 * bl.spread([s for r in rs for s in r["step_s"][1:]])["median"] for n, rs in runs.items()}
    return {"bench": "shape_matrix_cell", "cell": name, "shape": shape, "reps": reps, "timed_steps": steps - 1,
            "tokens_per_step": res["lorafarm"]["tokens_per_run"] / max(1, res["lorafarm"]["steps_per_run"]),
            "loadavg_before": load0, "loadavg_after": bl.loadavg(), "results": res, "verdicts": verdicts,
            "median_step_ms": step_ms}


def table(records: list[dict[str, Any]]) -> str:
    """The matrix as Markdown: one row per cell, paired wall ratio (CPU ratio) and verdict per baseline."""
    lines = ["| cell | step ms (lorafarm / HF / bare) | vs HF Trainer + PEFT (≥ 1.0×) | vs bare loop (≥ 0.97×) | load |",
             "| --- | --- | --- | --- | --- |"]

    def verdict(v: dict[str, Any] | None) -> str:
        if v is None:
            return "—"
        w, c = v["wall"], v["cpu"]
        return (f"{w['median']:.3f}× [{w['min']:.3f}–{w['max']:.3f}] (CPU {c['median']:.3f}×) "
                f"**{'met' if v['met'] else 'missed'}**")

    for r in records:
        v, ms = r["verdicts"], r["median_step_ms"]
        hf = v.get("hf_trainer") or v.get("hf_ddp")
        label = r["cell"] + (" (HF DDP, 2 procs)" if "hf_ddp" in v else "")
        times = " / ".join(f"{ms[n]:.1f}" for n in ("lorafarm", "hf_trainer", "hf_ddp", "bare") if n in ms)
        lines.append(f"| {label} | {times} | {verdict(hf)} | {verdict(v.get('bare'))} | "
                     f"{r['loadavg_before'][0]}→{r['loadavg_after'][0]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="all", help="comma-separated cell names (see --list), or all")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--full", action="store_true", help="the full product of the single-process axes (32 cells)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=17, help="steps per repetition; the first is not timed")
    ap.add_argument("--store", default=str(bl.BENCH / "out" / "store"))
    args = ap.parse_args(argv)
    todo = cells(args.full)
    if args.list:
        print("\n".join(todo))
        return 0
    if args.cells != "all":
        wanted = [c.strip() for c in args.cells.split(",")]
        unknown = [c for c in wanted if c not in todo]
        if unknown:
            raise SystemExit(f"--cells: unknown {unknown}; known: {list(todo)}")
        todo = {c: todo[c] for c in wanted}
    text_uri = long_text_data(bl.BENCH / "out" / "data" / "long_text.jsonl")
    records = []
    for name, shape in todo.items():
        rec = run_cell(name, shape, text_uri, args.store, args.reps, args.steps)
        bl.emit(rec)
        records.append(rec)
        print(table([rec]).splitlines()[-1], flush=True)
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
