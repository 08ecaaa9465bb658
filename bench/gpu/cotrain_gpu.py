"""Co-training on one GPU (issue 20): K jobs' adapters trained as one pack on one
Llama-3.1-8B-shaped base (random bf16 weights, nothing downloaded) vs the same K jobs one after
another, each alone on the same base, and the memory K separate jobs would hold. See
``bench/gpu/RUNBOOK.md``.

    .venv/bin/python bench/gpu/cotrain_gpu.py --out bench/out/gpu [--jobs 8] [--seq 2048] [--micro 1]
        [--steps 8] [--ckpt on|off] [--layers N] [--concurrent] [--tiny]

Each job: its own LoRA (ranks 16/8/32/4/…, q,k,v,o or all-linear, its own learning rate and init
seed), ``--micro`` full rows of ``--seq`` random tokens a step, AdamW, clipping by its own norm, the
chunked loss (``lorafarm.model.loss``) over its own rows divided by its own label tokens. The pack
routes each member's rows through its own adapter only (``lorafarm.cotrain``); the base runs once
for all of them. Figures: total tokens/s (steps 2..N) and peak memory
(``torch.cuda.max_memory_allocated``) of the pack; the same for each job alone, one after another
on one loaded base (sequential tokens/s; K separate jobs hold K × a solo job's peak, each its own
base). ``--concurrent`` also runs K separate processes at once when K solo peaks fit the GPU.
Targets (issue 20): pack >= 1.3x the separate jobs' total tokens/s, <= 0.6x their peak memory.
``--tiny`` runs the built-in tiny-llama in fp32 on the CPU: the smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

RANKS = (16, 8, 32, 4, 16, 8, 64, 16)
TARGETS = (["q_proj", "k_proj", "v_proj", "o_proj"], "all-linear")


def member(i: int) -> dict:
    return {"name": f"job{i}", "r": RANKS[i % len(RANKS)], "targets": TARGETS[i % 2], "lr": 1e-4 * (1 + i),
            "seed": 100 + i}


def _base(cfg: dict):
    import torch

    if cfg["tiny"]:
        from lorafarm.model.tiny import build_model

        torch.manual_seed(0)
        model = build_model()
        if cfg["ckpt"]:  # as load_base sets it up
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return model, torch.device("cpu")
    from gpu_bench import write_base

    from lorafarm.model.load import load_base

    directory = write_base(Path(cfg["cache"]) / f"llama31-8b-shaped-{cfg['layers'] or 32}", cfg["layers"])
    model = load_base(directory, dtype=torch.bfloat16, gradient_checkpointing=cfg["ckpt"])
    return model.to("cuda"), torch.device("cuda")


def train(model, device, jobs: list[dict], cfg: dict, pack: bool) -> dict:
    """``cfg['steps'] + 1`` steps of ``jobs`` on ``model`` (a pack when ``pack``, else one job's
    LoRA model); tokens/s over steps 2..N and the peak memory of the whole run."""
    import contextlib

    import torch

    from lorafarm.cotrain import member_parameters, routed
    from lorafarm.model.loss import chunk_tokens_for, chunked_token_loss_sum

    inner = model.get_base_model()
    body, head = inner.get_decoder(), inner.get_output_embeddings()
    chunk = chunk_tokens_for(inner.config.vocab_size)
    params = {j["name"]: (member_parameters(model, j["name"]) if pack else
                          [p for p in model.parameters() if p.requires_grad]) for j in jobs}
    opts = {j["name"]: torch.optim.AdamW(params[j["name"]], lr=j["lr"]) for j in jobs}
    names = [j["name"] for j in jobs for _ in range(cfg["micro"])]
    g = torch.Generator().manual_seed(1)
    rows, seq, vocab = len(names), cfg["seq"], inner.config.vocab_size
    per = cfg["micro"] * seq  # each job's label tokens a step (full rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = 0.0
    for step in range(cfg["steps"] + 1):
        if step == 1:  # the first step (allocations, optimizer state) is not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids = torch.randint(4, vocab, (rows, seq + 1), generator=g).to(device)
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        # routed through the backward too: gradient checkpointing runs the layers' forward again there
        with routed(model, names) if pack else contextlib.nullcontext():
            hidden = body(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
            labels, m = ids[:, 1:], cfg["micro"]
            loss = sum(chunked_token_loss_sum(hidden[i * m:(i + 1) * m], labels[i * m:(i + 1) * m], head, chunk) / per
                       for i in range(len(jobs)))
            loss.backward()
        for name, o in opts.items():
            torch.nn.utils.clip_grad_norm_(params[name], 1.0)
            o.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # the process's peak RSS so far (the smoke test's figure, not a GPU one)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"tokens_per_s": per * len(jobs) * cfg["steps"] / wall, "seconds": wall, "peak_bytes": peak}


def child(cfg: dict) -> dict:
    """One process: ``cfg['mode']`` = pack (all jobs at once), solo (each job alone, one after
    another, on one loaded base) or one (job ``cfg['index']`` alone: a concurrent process)."""
    import torch

    from lorafarm.cotrain import new_pack
    from lorafarm.model import apply_lora
    from lorafarm.spec import LoraSpec

    base, device = _base(cfg)
    jobs = [member(i) for i in range(cfg["jobs"])]
    specs = {j["name"]: (LoraSpec(r=j["r"], alpha=2 * j["r"], dropout=0.0, target_modules=j["targets"]), j["seed"])
             for j in jobs}
    if cfg["mode"] == "pack":
        return {"pack": train(new_pack(base, specs).to(device), device, jobs, cfg, pack=True)}
    chosen = jobs if cfg["mode"] == "solo" else [jobs[cfg["index"]]]
    out = []
    for j in chosen:
        model = apply_lora(base, specs[j["name"]][0], seed=j["seed"]).to(device)
        out.append(train(model, device, [j], cfg, pack=False))
        base = model.unload()  # the same base weights, the LoRA layers gone
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"solo": out}


def _run(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode:
        raise SystemExit(f"child failed ({p.returncode})")
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/gpu")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/lorafarm-bench"))
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a smoke run (default: 32)")
    ap.add_argument("--ckpt", choices=("on", "off"), default="on")
    ap.add_argument("--concurrent", action="store_true", help="also K separate processes at once, if they fit")
    ap.add_argument("--tiny", action="store_true", help="tiny-llama on the CPU (smoke test)")
    ap.add_argument("--child")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    cfg = {"jobs": args.jobs, "seq": args.seq, "micro": args.micro, "steps": args.steps, "layers": args.layers,
           "ckpt": args.ckpt == "on", "tiny": args.tiny, "cache": args.cache}
    pack = _result(_run({**cfg, "mode": "pack"}))["pack"]
    solo = _result(_run({**cfg, "mode": "solo"}))["solo"]
    seq_tps = sum(s["tokens_per_s"] * s["seconds"] for s in solo) / sum(s["seconds"] for s in solo)
    separate_peak = sum(s["peak_bytes"] for s in solo)  # each separate job holds its own base
    rec = {"bench": "cotrain_gpu", **{k: v for k, v in cfg.items() if k != "cache"}, "loadavg": bl.loadavg(),
           "pack": pack, "solo": solo, "sequential_tokens_per_s": seq_tps, "separate_peak_bytes": separate_peak,
           "pack_over_sequential_tokens_per_s": pack["tokens_per_s"] / seq_tps,
           "pack_over_separate_peak": pack["peak_bytes"] / separate_peak}
    if args.concurrent and not args.tiny:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        if separate_peak <= 0.9 * total:
            t = time.perf_counter()
            procs = [_run({**cfg, "mode": "one", "index": i}) for i in range(args.jobs)]
            runs = [_result(p)["solo"][0] for p in procs]
            rec["concurrent"] = {"tokens_per_s": sum(r["tokens_per_s"] for r in runs), "wall_s": time.perf_counter() - t}
            rec["pack_over_concurrent_tokens_per_s"] = pack["tokens_per_s"] / rec["concurrent"]["tokens_per_s"]
        else:
            rec["concurrent"] = f"not run: {args.jobs} separate jobs need {separate_peak / 2**30:.0f} GiB, the GPU has " \
                                f"{total / 2**30:.0f} GiB"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cotrain_gpu.json").write_text(json.dumps(rec, indent=2))
    bl.emit(rec)
    t, m = rec["pack_over_sequential_tokens_per_s"], rec["pack_over_separate_peak"]
    print(f"| {args.jobs} jobs co-trained vs alone | tokens/s {t:.3f}x one after another (target >= 1.3x: "
          f"{'met' if t >= 1.3 else 'missed'}) | peak memory {m:.3f}x of {args.jobs} separate jobs (target <= 0.6x: "
          f"{'met' if m <= 0.6 else 'missed'}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
