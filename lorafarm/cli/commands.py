"""One function per CLI command: parse nothing, call the library, print the result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ..errors import AdapterError, JobFailed, LorafarmError, SpecError
from ..spec import json_schema, load_spec
from ..storage import Store, is_remote, normalize
from .main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit_json
from .progress import JobProgress


def run(args: argparse.Namespace, console: Console) -> int:
    from ..storage import new_job_id
    from ..worker.checkpoint import latest_checkpoint
    from ..worker.launch import ensure_ray, run_job
    from .paths import absolutize_local_paths

    spec = absolutize_local_paths(load_spec(args.spec, args.overrides), args.spec)
    store = Store.open(args.store)
    job_id = getattr(args, "resume", None) or new_job_id(spec.name)
    if getattr(args, "resume", None):
        ref = latest_checkpoint(store.job_uri(spec.tenant, job_id))
        if ref is None:
            raise SpecError([f"--resume: job {job_id!r} of tenant {spec.tenant!r} has no checkpoint in {store.root} — "
                             "check the job id and --store (checkpoints are under <store>/<tenant>/<job-id>/checkpoints/)"])
    ensure_ray()
    if not args.json:
        console.print(f"store: {store.root}  job: {job_id}", highlight=False)
    try:
        with JobProgress(console, enabled=not args.json) as progress:
            result = run_job(spec, store, job_id=job_id, on_progress=progress)
    except JobFailed as e:
        console.print(f"[red]job failed:[/] {e.reason}", highlight=False, soft_wrap=True)
        if latest_checkpoint(store.job_uri(spec.tenant, job_id)) is not None:
            console.print(f"continue from its latest checkpoint: lorafarm run {args.spec} --resume {job_id}",
                          highlight=False, soft_wrap=True)
        if args.json:
            emit_json({"job_id": job_id, "tenant": spec.tenant, "state": "FAILED", "adapter_uri": None,
                       "metrics": {}, "reason": e.reason})
        return EXIT_FAILED
    m = result.metrics
    console.print(
        f"[green]succeeded[/] {result.job_id}: {m['steps']} steps, train loss {m['final_train_loss']:.4f}"
        + (f", eval loss {m['initial_eval_loss']:.4f} → {m['final_eval_loss']:.4f}" if m.get("final_eval_loss") else "")
        + f", {m['trainable_params']:,} trainable params, optimizer state {m['optimizer_state_bytes']:,} B",
        highlight=False,
    )
    if args.json:
        emit_json(result.to_json())
    else:
        print(result.adapter_uri)
    return EXIT_OK


def validate(args: argparse.Namespace, console: Console) -> int:
    from ..preflight import preflight

    spec = load_spec(args.spec, args.overrides)
    report = preflight(spec)
    if args.json:
        emit_json(report)
    else:
        for key, value in report.items():
            console.print(f"{key}: {value}", highlight=False)
        console.print("[green]ok:[/] the spec is runnable")
    return EXIT_OK


def schema(args: argparse.Namespace, console: Console) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _adapter_source(args: argparse.Namespace) -> str:
    """An adapter URI as given, or a job id: asked of the scheduler, else looked up in the store."""
    src = args.source
    if "://" in src or "/" in src or Path(src).exists():
        return normalize(src)
    if not args.store and not args.tenant:
        try:
            from ..scheduler.client import call

            summary = call("status", src)
            if summary.get("adapter_uri"):
                return summary["adapter_uri"]
            raise AdapterError(f"job {src} is {summary['state']} and has no adapter — "
                               "pull it after it succeeds (`lorafarm status " + src + "`)")
        except AdapterError:
            raise
        except LorafarmError:
            pass  # no scheduler reachable: fall back to the default store
    store = Store.open(args.store)
    return store.find_job(src, args.tenant) + "/adapter"


def pull(args: argparse.Namespace, console: Console) -> int:
    from ..adapter.save import pull as pull_adapter

    uri = _adapter_source(args)
    manifest = pull_adapter(uri, args.dest)
    if args.json:
        emit_json({"adapter_uri": uri, "dest": str(Path(args.dest).resolve()), "files": manifest["files"]})
    else:
        console.print(f"pulled {uri} → {args.dest} ({len(manifest['files'])} files, sha256 verified)")
    return EXIT_OK


def merge(args: argparse.Namespace, console: Console) -> int:
    from ..adapter.merge import merge_adapter

    out = merge_adapter(args.adapter, args.outdir, base=args.base, scale=args.scale)
    console.print(f"merged model written to {out}")
    return EXIT_OK


def models(args: argparse.Namespace, console: Console) -> int:
    from ..model.tiny import export

    if args.models_command == "export":
        out = export(args.dir)
        console.print(f"wrote {args.name} to {out}")
        return EXIT_OK
    raise SpecError([f"models {args.models_command}: unknown — use `lorafarm models export`"])


__all__ = ["EXIT_FAILED", "EXIT_USAGE", "is_remote"]
