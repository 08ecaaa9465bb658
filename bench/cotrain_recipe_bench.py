"""Co-training through the real recipes (issue 20): K quickstart-sized jobs as one pack
(``PackRecipe``: one process, one DeepSpeed engine, the frozen base once) vs the same K jobs as
separate concurrent processes (``LoraRecipe`` each) vs one after another, same machine, one run.

    .venv/bin/python bench/cotrain_recipe_bench.py [--jobs 4] [--steps 12] [--seq 256] [--micro 4]

Each job: the quickstart's tiny-llama and data, its own LoRA rank (4/8/16/2…), targets (q,v or
all-linear), learning rate and seed; micro batch ``--micro``, global batch ``2 × --micro``,
``--steps`` steps, ZeRO-0, fp32, one rank over gloo. Separate jobs: K processes at once with
``cores / K`` threads each (at least 1); the pack: one process with all the cores' threads;
sequential: K processes one after another with all threads. Reported: total tokens/s (every
job's tokens over the wall time from the first training step to the last adapter published —
set-up excluded, each process's own), the sum of the processes' peak RSS (``ru_maxrss``; sequential: the largest one), and
the ratios pack / separate and pack / sequential.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

RANKS = (4, 8, 16, 2, 32, 8, 4, 16)
TARGETS = (["q_proj", "v_proj"], "all-linear")


def spec(i: int, args) -> dict:
    return bl.spec_dict(**{"name": f"job{i}", "lora.r": RANKS[i % len(RANKS)], "lora.alpha": 2 * RANKS[i % len(RANKS)],
                           "lora.dropout": 0.0, "lora.target_modules": TARGETS[i % 2],
                           "training.learning_rate": 1e-3 * (1 + i), "training.seed": 100 + i,
                           "training.max_steps": args.steps, "training.micro_batch_size": args.micro,
                           "training.global_batch_size": 2 * args.micro, "training.seq_len": args.seq,
                           "training.eval_every_steps": 0, "training.checkpoint_every_steps": 0,
                           "dataset.eval_fraction": 0.0, "zero.stage": 0, "resources.workers": 1})


def child(cfg: dict) -> dict:
    """One process: the pack (several configs) or one job alone."""
    import torch

    torch.set_num_threads(cfg["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(cfg["port"]), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1)
    from lorafarm.spec import validate_spec
    from lorafarm.worker.recipe import LoraRecipe, WorkerConfig

    configs = [WorkerConfig(**{**c, "spec": validate_spec(c["spec"])}) for c in cfg["configs"]]
    if len(configs) == 1:
        recipe = LoraRecipe(configs[0], 0, 1)
        recipe.setup()
        t0 = time.time()
        recipe.train()
        recipe.export()
        t1, tokens = time.time(), recipe.tokens_seen
    else:
        from lorafarm.cotrain.pack import PackRecipe

        recipe = PackRecipe(configs, 0, 1)
        recipe.setup()
        t0 = time.time()
        recipe.engine.train()
        while any(m.state == "training" for m in recipe.members):
            recipe.pack_step()
        t1, tokens = time.time(), sum(m.tokens_seen for m in recipe.members)
        assert all(m.state == "succeeded" for m in recipe.members), [m.reason for m in recipe.members]
    return {"t0": t0, "t1": t1, "tokens": tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(configs: list[dict], threads: int, tmp: Path) -> subprocess.Popen:
    arg = tmp / f"child-{len(list(tmp.iterdir()))}.json"
    arg.write_text(json.dumps({"configs": configs, "threads": threads, "port": bl.free_port()}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--child", str(arg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"child failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def configs_for(args, store, tag: str) -> list[dict]:
    from lorafarm.data import prepare
    from lorafarm.model import resolve_base
    from lorafarm.spec import validate_spec

    out = []
    for i in range(args.jobs):
        s = validate_spec(spec(i, args))
        prepared = prepare(s, str(resolve_base(s.base_model)), store, parallel=False)
        job_id = f"{s.name}-{tag}"
        out.append({"spec": s.model_dump(mode="json"), "job_id": job_id, "adapter_uri": store.adapter_uri(s.tenant, job_id),
                    "job_uri": store.job_uri(s.tenant, job_id), "train_rows_uri": prepared.train_uri,
                    "eval_rows_uri": prepared.eval_uri, "data_stats": prepared.stats,
                    "dataset_fingerprint": prepared.fingerprint})
    return out


def total(runs: list[dict], one_after_another: bool = False) -> dict:
    """All jobs' tokens over the wall time they trained together (one after another: the sum of
    their own times, not the set-ups between them)."""
    wall = sum(r["t1"] - r["t0"] for r in runs) if one_after_another else \
        max(r["t1"] for r in runs) - min(r["t0"] for r in runs)
    rss = [r["peak_rss_mb"] for r in runs]
    return {"tokens_per_s": sum(r["tokens"] for r in runs) / wall, "wall_s": wall,
            "peak_rss_mb": max(rss) if one_after_another else sum(rss)}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(Path(sys.argv[2]).read_text()))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4)
    args = ap.parse_args()
    from lorafarm.storage import Store

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="cotrain-bench-") as d:
        tmp = Path(d) / "args"
        tmp.mkdir()
        store = Store.open(str(Path(d) / "store"))
        pack = total([result(spawn(configs_for(args, store, "pack"), cores, tmp))])
        procs = [spawn([c], max(1, cores // args.jobs), tmp) for c in configs_for(args, store, "separate")]
        separate = total([result(p) for p in procs])
        sequential = total([result(spawn([c], cores, tmp)) for c in configs_for(args, store, "sequential")],
                           one_after_another=True)
    out = {"bench": "cotrain_recipe", "jobs": args.jobs, "steps": args.steps, "seq": args.seq, "micro": args.micro,
           "cores": cores, "loadavg": bl.loadavg(), "pack": pack, "separate": separate, "sequential": sequential,
           "tokens_per_s_vs_separate": pack["tokens_per_s"] / separate["tokens_per_s"],
           "tokens_per_s_vs_sequential": pack["tokens_per_s"] / sequential["tokens_per_s"],
           "peak_rss_vs_separate": pack["peak_rss_mb"] / separate["peak_rss_mb"]}
    bl.emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
