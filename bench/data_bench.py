"""Tokenization throughput: ``lorafarm.data.prepare`` with Ray Data on 2 CPUs vs one process,
and the time of a cache hit.

    .venv/bin/python bench/data_bench.py [--copies 10] [--reps 3]

The quickstart's chat data (400 examples) repeated ``--copies`` times into a temporary JSONL
file. Ray is started in this process (``ray.init(num_cpus=2, include_dashboard=False)``, its
start-up reported apart, never counted). Each repetition prepares into a fresh store (a cache
miss: read, encode, pack, write parquet), single-process and Ray Data alternating; then one
``prepare`` into a filled store times the cache hit. Figures: examples/s and tokens/s, median
and spread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args(argv)
    from lorafarm.data import prepare
    from lorafarm.model import resolve_base
    from lorafarm.spec import validate_spec
    from lorafarm.storage import Store

    with tempfile.TemporaryDirectory(prefix="lorafarm-databench-") as tmp:
        lines = (bl.REPO / "jobs/data/pirate_chat.jsonl").read_text().splitlines()
        data = Path(tmp) / "chat.jsonl"
        data.write_text("\n".join(lines * args.copies) + "\n")
        spec = validate_spec(bl.spec_dict(**{"dataset.uri": str(data)}))
        tok = str(resolve_base(spec.base_model))
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(bl.REPO)}})
        ray_start = time.perf_counter() - t
        times: dict[str, list[float]] = {"single": [], "ray": []}
        stats = None
        load0 = bl.loadavg()
        try:
            prepare(spec, tok, Store.open(str(Path(tmp) / "warm")), parallel=True)  # Ray Data warm-up
            for r in range(args.reps + 1):  # the first round warms both paths up, not counted
                for mode in (("single", "ray") if r % 2 else ("ray", "single")):
                    store = Store.open(str(Path(tmp) / f"s-{mode}-{r}"))
                    t = time.perf_counter()
                    p = prepare(spec, tok, store, parallel=mode == "ray")
                    dt = time.perf_counter() - t
                    assert not p.cache_hit
                    stats = p.stats
                    if r:
                        times[mode].append(dt)
            hits = []
            for _ in range(5):
                t = time.perf_counter()
                p = prepare(spec, tok, store, parallel=True)
                hits.append(time.perf_counter() - t)
                assert p.cache_hit
        finally:
            ray.shutdown()
    assert stats is not None
    n, tokens = stats["examples"], stats["tokens"]
    rec = {"bench": "tokenize", "examples": n, "tokens": tokens, "ray_cpus": args.cpus, "ray_init_s": ray_start,
           "single_s": bl.spread(times["single"]), "ray_s": bl.spread(times["ray"]),
           "single_examples_per_s": n / bl.spread(times["single"])["median"],
           "ray_examples_per_s": n / bl.spread(times["ray"])["median"],
           "ray_tokens_per_s": tokens / bl.spread(times["ray"])["median"],
           "single_tokens_per_s": tokens / bl.spread(times["single"])["median"],
           "ray_over_single": bl.spread(times["single"])["median"] / bl.spread(times["ray"])["median"],
           "cache_hit_s": bl.spread(hits), "loadavg_before": load0, "loadavg_after": bl.loadavg()}
    bl.emit(rec)
    print(f"tokenize {n} examples: single {rec['single_examples_per_s']:.0f}/s, Ray Data ({args.cpus} CPUs) "
          f"{rec['ray_examples_per_s']:.0f}/s ({rec['ray_over_single']:.2f}x); cache hit "
          f"{rec['cache_hit_s']['median'] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
