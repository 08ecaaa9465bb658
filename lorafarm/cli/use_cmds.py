"""``lorafarm try`` and ``lorafarm eval``: use a finished adapter next to its base.

The library side is :mod:`lorafarm.use`; this module parses, resolves adapter sources (a store
URI, a local directory, or a job id) and prints tables or JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from .. import api
from ..errors import SpecError
from .output import EXIT_OK, emit_json, warn


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", nargs="?", help="adapter: store URI, local directory, or job id")
    p.add_argument("--adapter", dest="more_adapters", action="append", default=[], metavar="ADAPTER",
                   help="another adapter on the same base (repeatable; one column each)")
    p.add_argument("--scale", type=float, nargs="+", action="extend", default=None, metavar="S",
                   help="adapter strength: S × alpha/r, files unchanged (several allowed; default 1.0)")
    p.add_argument("--base", help="base model (default: the manifest's base_model); must have the adapter's shapes")
    p.add_argument("--store", help="store root to find a job id in (default $LORAFARM_STORE)")
    p.add_argument("--tenant", help="tenant of a job id (default: search every tenant)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a base that needs its repository's own code run it (never taken from a manifest)")
    p.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("try", help="generate with the base and with adapters side by side")
    _add_common(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="file of prompts: one a line, or JSONL with prompt/text/messages")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of each generation when sampling")
    p.add_argument("--system", help="system message for chat adapters")
    p.set_defaults(handler=try_cmd)

    p = sub.add_parser("eval", help="loss, perplexity and label accuracy of the base and adapters on a file")
    _add_common(p)
    p.add_argument("--data", required=True, help="held-out data: path, file:// or s3:// (.jsonl/.json/.parquet)")
    p.add_argument("--format", choices=["text", "prompt_completion", "chat"],
                   help="data format (default: the adapter's job format)")
    p.add_argument("--labels", default="auto",
                   help="accuracy over label strings: auto (default), none, or a comma-separated list")
    p.add_argument("--seq-len", type=int, help="truncate examples here (default: the job's seq_len)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-examples", type=int, help="evaluate the first N examples only")
    p.add_argument("--name", help="results name: eval/<name>.json (default: the data file's stem)")
    p.add_argument("--no-save", action="store_true", help="do not write eval/<name>.json")
    p.set_defaults(handler=eval_cmd)


def _sources(args: argparse.Namespace) -> list[str]:
    given = ([args.adapter] if args.adapter else []) + list(args.more_adapters)
    if not given:
        raise SpecError(["no adapter given — name one: a store URI, a local directory or a job id "
                         "(`lorafarm try JOB_ID --prompt ...`)"])
    return [_source(s, args.store, args.tenant) for s in given]


def _source(source: str, store: str | None, tenant: str | None) -> str:
    """A URI or a local path as given, with no Ray; a job id in ``--store``/``--tenant``'s store, or
    from the scheduler of ``RAY_ADDRESS``'s cluster when that is set and neither is given, else
    in the default store: never whatever cluster ``ray.init("auto")`` would find."""
    import os
    from pathlib import Path

    from ..errors import StorageError
    from ..storage import Store, normalize

    if "://" in source or "/" in source or Path(source).exists():
        return normalize(source)
    if store or tenant or os.environ.get("RAY_ADDRESS"):
        return api.adapter_source(source, store, tenant)
    try:
        return Store.open(None).find_job(source) + "/adapter"
    except StorageError as e:
        raise StorageError(f"{e} (a local adapter directory? none is called {source!r} here; a job of a "
                           "scheduler? pass --store, or set RAY_ADDRESS)") from None


MAX_NEW_TOKENS = 1 << 20
MAX_SEED = 2**63 - 1


def _check_numbers(args: argparse.Namespace) -> list[float]:
    """Every numeric flag finite and in range, all problems at once (exit 2)."""
    import math

    problems = []
    scales = args.scale or [1.0]
    for s in scales:
        if not math.isfinite(s):
            problems.append(f"--scale {s}: must be a finite number (1 = as trained, 0 = the base) — e.g. --scale 0.5 1")
    for opt in ("max_new_tokens", "batch_size", "seq_len", "max_examples"):
        v = getattr(args, opt, None)
        if v is not None and v < 1:
            problems.append(f"--{opt.replace('_', '-')} {v}: must be >= 1")
    if getattr(args, "max_new_tokens", None) is not None and args.max_new_tokens > MAX_NEW_TOKENS:
        problems.append(f"--max-new-tokens {args.max_new_tokens}: must be <= {MAX_NEW_TOKENS:,}")
    if getattr(args, "seq_len", None) is not None and args.seq_len > 1_048_576:
        problems.append(f"--seq-len {args.seq_len}: must be <= 1,048,576 (the spec's training.seq_len limit)")
    temperature = getattr(args, "temperature", 0.0)
    if not math.isfinite(temperature) or temperature < 0:
        problems.append(f"--temperature {temperature}: must be a finite number >= 0 (0 = greedy)")
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED:
        problems.append(f"--seed {seed}: must be between 0 and 2**63-1")
    if problems:
        raise SpecError(problems)
    return list(dict.fromkeys(scales))


def try_cmd(args: argparse.Namespace, console: Console) -> int:
    from ..use.generate import load_prompts, try_prompts
    from ..use.load import quiet_loading, session

    scales = _check_numbers(args)
    prompts: list[Any] = list(args.prompt) + (load_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise SpecError(["no prompt given — use --prompt TEXT (repeatable) or --prompts FILE"])
    sources = _sources(args)
    quiet_loading()
    with session(sources, base=args.base, device=args.device, dtype=args.dtype,
                 trust_remote_code=args.trust_remote_code) as s:
        for w in s.warnings:
            warn(console, w)
        records = try_prompts(s, prompts, scales, args.max_new_tokens, args.temperature, args.seed, args.system)
    if args.json:
        for r in records:
            emit_json(r)
        return EXIT_OK
    from rich.table import Table

    table = Table(show_lines=True, title=f"base: {s.base_label}")
    table.add_column("prompt", overflow="fold")
    table.add_column("base", overflow="fold")
    for out in records[0]["outputs"]:
        table.add_column(f"{out['adapter']} ×{out['scale']:g}", overflow="fold")
    for r in records:
        prompt = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
        table.add_row(prompt, r["base"], *[o["text"] for o in r["outputs"]])
    Console().print(table)
    return EXIT_OK


def eval_cmd(args: argparse.Namespace, console: Console) -> int:
    from ..storage import normalize
    from ..use.evaluate import check_name, default_name, evaluate, save_results
    from ..use.load import quiet_loading, session

    scales = _check_numbers(args)
    name = check_name(args.name) if args.name else default_name(args.data)
    sources = _sources(args)
    data = normalize(args.data)
    quiet_loading()
    with session(sources, base=args.base, device=args.device, dtype=args.dtype,
                 trust_remote_code=args.trust_remote_code) as s:
        for w in s.warnings:
            warn(console, w)
        summary = evaluate(s, data, fmt=args.format, scales=scales, labels=args.labels, seq_len=args.seq_len,
                           batch_size=args.batch_size, max_examples=args.max_examples)
        saved, warnings = ({}, []) if args.no_save else save_results(summary, s, name)
    for w in warnings:
        warn(console, w)
    summary = {**summary, "name": name, "saved": saved}
    if args.json:
        emit_json(summary)
        return EXIT_OK
    _print_eval(summary)
    for label, uri in saved.items():
        console.print(f"{label}: results written to {uri}", highlight=False)
    return EXIT_OK


def _print_eval(summary: dict[str, Any]) -> None:
    from rich.table import Table

    has_acc = summary.get("labels") is not None
    title = (f"{summary['data']} — {summary['examples']} examples, {summary['format']}, "
             f"{summary['results'][0]['label_tokens']:,} label tokens, base {summary['base_model']}")
    table = Table(title=title)
    for col in ("model", "scale", "loss", "Δ loss", "perplexity") + (("accuracy", "Δ acc") if has_acc else ()):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in summary["results"]:
        row = [r["adapter"] or "base", "" if r["scale"] is None else f"{r['scale']:g}", f"{r['loss']:.4f}",
               "" if "loss_delta" not in r else f"{r['loss_delta']:+.4f}", f"{r['perplexity']:.3f}"]
        if has_acc:
            row += [f"{r['accuracy']:.3f}", "" if "accuracy_delta" not in r else f"{r['accuracy_delta']:+.3f}"]
        table.add_row(*row)
    Console().print(table)
    if has_acc:
        Console().print(f"labels: {', '.join(json.dumps(x) for x in summary['labels'])}", highlight=False)

