"""Data at scale: streaming tokenization and the sharded cache, side by side in one run.

    .venv/bin/python bench/data_bench.py [--rows 20000] [--scale 4] [--steps 20]

Synthetic chat JSONL (the quickstart's pirate chats, each made unique by its row number) at
``--rows`` and ``--rows * --scale`` rows, tokenized with the quickstart's tiny-llama tokenizer
(seq_len 256, packing off). Every measurement runs in a fresh child process, so its peak RSS
(``ru_maxrss``) is its own:

- ``prepare``: the driver of ``lorafarm.data.prepare`` with Ray Data on ``--cpus`` logical CPUs
  (``ray.init`` in the child, start-up timed apart), and in process (1 CPU): wall time, rows/s,
  driver peak RSS at both sizes;
- ``hf``: the anchor users know, Hugging Face ``datasets`` (``load_dataset("json")`` + a
  single-process ``map`` of the same ``encode`` function, a fresh cache directory): rows/s;
- ``worker``: a worker's data path on the cached split (:class:`lorafarm.data.rows.RowSource`:
  open, then ``--steps`` global batches of 16 rows with prefetch) vs the old whole-table load
  (``load_rows``): time to the first batch and peak RSS at both sizes.

Figures: ratios 4x-rows over 1x (RSS, time to first batch) and rows/s over the HF baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

SETTLE_S = 3.0  # after ray.init, before the clock


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_chat(path: Path, rows: int) -> Path:
    lines = [json.loads(x) for x in (bl.REPO / "jobs/data/pirate_chat.jsonl").read_text().splitlines() if x.strip()]
    with path.open("w") as fh:
        for i in range(rows):
            ex = lines[i % len(lines)]
            msgs = [dict(m) for m in ex["messages"]]
            msgs[-1]["content"] = f"{msgs[-1]['content']} (#{i})"
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return path


def _spec(data: Path):
    from lorafarm.spec import validate_spec

    return validate_spec(bl.spec_dict(**{"dataset.uri": str(data), "training.packing": False}))


# ------------------------------------------------------------------ children (one measurement each)
def child_prepare(data: Path, store: str, cpus: int) -> dict:
    from lorafarm.data import prepare
    from lorafarm.model import resolve_base
    from lorafarm.storage import Store

    spec = _spec(data)
    tok = str(resolve_base(spec.base_model))
    ray_init_s = 0.0
    if cpus:
        import ray

        t = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(bl.REPO)}})
        ray_init_s = time.perf_counter() - t
        # the workers Ray prestarts are up and its start-up churn over before the clock, as on a
        # cluster that has been running
        ray.get([ray.remote(num_cpus=1)(lambda: None).remote() for _ in range(cpus)])
        time.sleep(SETTLE_S)
    from lorafarm.data import stream

    stream._tokenizer(tok)  # loaded before the clock, as the HF baseline's (Ray's tasks load theirs on it)

    ray_units, run_ray = [], stream.run_ray

    def counted(units, *a, **k):  # how many units the adaptive path handed to Ray Data tasks
        ray_units.append(len(units))
        return run_ray(units, *a, **k)

    stream.run_ray = counted
    t = time.perf_counter()
    p = prepare(spec, tok, Store.open(store), parallel=bool(cpus))
    dt = time.perf_counter() - t
    return {"seconds": dt, "ray_init_s": ray_init_s, "rows": p.stats["examples"], "tokens": p.stats["tokens"],
            "cache_files": p.stats["cache_files"], "ray_units": sum(ray_units), "peak_rss_mb": _peak_rss_mb(),
            "train_uri": p.train_uri}


def child_hf(data: Path, cache_dir: str) -> dict:
    import datasets

    from lorafarm.data.formats import encode
    from lorafarm.model import load_tokenizer, resolve_base

    spec = _spec(data)
    tokenizer = load_tokenizer(resolve_base(spec.base_model))
    datasets.disable_progress_bars()
    t = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=cache_dir)

    def fn(ex):
        enc = encode(ex, "chat", tokenizer, spec.training.seq_len)
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    out = ds.map(fn, remove_columns=ds.column_names, num_proc=None)
    dt = time.perf_counter() - t
    return {"seconds": dt, "rows": len(out), "peak_rss_mb": _peak_rss_mb()}


def child_worker(uri: str, steps: int, mode: str) -> dict:
    from lorafarm.data import collate, global_batch, load_rows
    from lorafarm.data.rows import RowSource

    t = time.perf_counter()
    if mode == "rows":
        src = RowSource(uri)
        n = len(src)

        def take(ix):
            return src.take(ix)
    else:
        table = load_rows(uri)
        n = len(table)

        def take(ix):
            return table.take(list(map(int, ix))).to_pylist()
    first = None
    for k in range(steps):
        batch = global_batch(k, n, 16, 0)
        if mode == "rows" and k + 1 < steps:
            src.prefetch(global_batch(k + 1, n, 16, 0))
        collate(take(batch), 0, False)
        if first is None:
            first = time.perf_counter() - t
    return {"first_batch_s": first, "steps_s": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb(), "rows": n}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            rec = child_prepare(Path(rest[0]), rest[1], int(rest[2]))
        elif kind == "hf":
            rec = child_hf(Path(rest[0]), rest[1])
        else:
            rec = child_worker(rest[0], int(rest[1]), rest[2])
        print(json.dumps(rec))
        return 0

    load0 = bl.loadavg()
    sizes = {"1x": args.rows, f"{args.scale}x": args.rows * args.scale}
    rec: dict = {"bench": "data", "rows": sizes, "cpus": args.cpus, "loadavg_before": load0}
    with tempfile.TemporaryDirectory(prefix="lorafarm-databench-") as tmp:
        files = {k: write_chat(Path(tmp) / f"chat-{k}.jsonl", n) for k, n in sizes.items()}
        rec["jsonl_mb"] = {k: round(f.stat().st_size / 2**20, 1) for k, f in files.items()}
        small = files["1x"]
        rec["hf_1cpu"] = _child("hf", str(small), str(Path(tmp) / "hf-cache"))
        rec["ours_1cpu_in_process"] = _child("prepare", str(small), str(Path(tmp) / "s-local"), "0")
        rec["ours_ray_1cpu"] = _child("prepare", str(small), str(Path(tmp) / "s-ray1"), "1")
        for k, f in files.items():
            rec[f"ours_ray_{args.cpus}cpu_{k}"] = _child("prepare", str(f), str(Path(tmp) / f"s-ray-{k}"),
                                                         str(args.cpus))
        for k in sizes:
            uri = rec[f"ours_ray_{args.cpus}cpu_{k}"]["train_uri"]
            rec[f"worker_rows_{k}"] = _child("worker", uri, str(args.steps), "rows")
            rec[f"worker_whole_table_{k}"] = _child("worker", uri, str(args.steps), "table")
    big = f"{args.scale}x"
    hf_rate = rec["hf_1cpu"]["rows"] / rec["hf_1cpu"]["seconds"]

    def rate(key: str) -> float:
        return rec[key]["rows"] / rec[key]["seconds"]

    rec["ratios"] = {
        "in_process_1cpu_over_hf": rate("ours_1cpu_in_process") / hf_rate,
        "ray_1cpu_over_hf": rate("ours_ray_1cpu") / hf_rate,
        f"ray_{args.cpus}cpu_over_hf": rate(f"ours_ray_{args.cpus}cpu_1x") / hf_rate,
        "driver_rss_big_over_small": rec[f"ours_ray_{args.cpus}cpu_{big}"]["peak_rss_mb"]
        / rec[f"ours_ray_{args.cpus}cpu_1x"]["peak_rss_mb"],
        "worker_rss_big_over_small": rec[f"worker_rows_{big}"]["peak_rss_mb"] / rec["worker_rows_1x"]["peak_rss_mb"],
        "whole_table_worker_rss_big_over_small": rec[f"worker_whole_table_{big}"]["peak_rss_mb"]
        / rec["worker_whole_table_1x"]["peak_rss_mb"],
        "first_batch_big_over_small": rec[f"worker_rows_{big}"]["first_batch_s"] / rec["worker_rows_1x"]["first_batch_s"],
        "whole_table_first_batch_big_over_small": rec[f"worker_whole_table_{big}"]["first_batch_s"]
        / rec["worker_whole_table_1x"]["first_batch_s"],
    }
    rec["loadavg_after"] = bl.loadavg()
    bl.emit(rec)
    r = rec["ratios"]
    units = {k: f"{rec[k]['ray_units']}/{rec[k]['cache_files']} units on Ray Data"
             for k in ("ours_ray_1cpu", f"ours_ray_{args.cpus}cpu_1x", f"ours_ray_{args.cpus}cpu_{big}")}
    print(f"tokenize {sizes['1x']} chat rows: HF datasets.map {hf_rate:.0f}/s; ours in process "
          f"{r['in_process_1cpu_over_hf']:.2f}x; with Ray up (adaptive) on 1 CPU {r['ray_1cpu_over_hf']:.2f}x "
          f"({units['ours_ray_1cpu']}), on {args.cpus} CPUs {r[f'ray_{args.cpus}cpu_over_hf']:.2f}x "
          f"({units[f'ours_ray_{args.cpus}cpu_1x']}; {big}: {units[f'ours_ray_{args.cpus}cpu_{big}']})")
    print(f"{args.scale}x rows: driver peak RSS {r['driver_rss_big_over_small']:.2f}x, worker (RowSource) "
          f"{r['worker_rss_big_over_small']:.2f}x vs whole table {r['whole_table_worker_rss_big_over_small']:.2f}x; "
          f"first batch {r['first_batch_big_over_small']:.2f}x vs {r['whole_table_first_batch_big_over_small']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
