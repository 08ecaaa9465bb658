"""Commands on one job that need no scheduler: ``run``, ``validate``, ``schema``, ``pull``,
``merge``, ``models export``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from .. import api
from .args import STORE_HELP, add_access_args, add_spec_args, notice_printer
from .output import EXIT_FAILED, EXIT_OK, Parser, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one job on the current (or a local) Ray cluster")
    add_spec_args(p)
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--resume", metavar="JOB_ID", help="continue that job from its latest checkpoint (the same spec; "
                   "resources, zero.stage and micro_batch_size may change)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--direct", action="store_true",
                   help="on a cluster where `lorafarm serve` runs: run here, outside the scheduler (operators; "
                        "needs the admin key when the tenants file lists keys). Without it such a run is submitted "
                        "to the scheduler and followed, so quota, trust and keys apply")
    add_access_args(p)
    p.set_defaults(handler=run)

    p = sub.add_parser("co-train", help="run several compatible jobs as one pack on one shared frozen base (each "
                       "publishes the adapter it would get alone)")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="job spec YAML files (same base, precision, workers, "
                   "ZeRO stage, packing and seq-len bucket)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line: "
                   "{\"jobs\": [run --json's object per job]}")
    p.set_defaults(handler=co_train)

    p = sub.add_parser("validate", help="check a spec and its data/model without training (exit 0 or 2)")
    add_spec_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=validate)

    sub.add_parser("schema", help="print the job spec's JSON schema").set_defaults(handler=schema)

    p = sub.add_parser("pull", help="download a verified adapter")
    p.add_argument("source", help="adapter URI, or a job id with --store/--tenant")
    p.add_argument("dest", help="local directory (new or empty; --force replaces it)")
    p.add_argument("--store")
    p.add_argument("--tenant")
    p.add_argument("--force", action="store_true", help="replace DEST if it is a non-empty directory")
    p.add_argument("--json", action="store_true")
    add_access_args(p)
    p.set_defaults(handler=pull)

    p = sub.add_parser("merge", help="write the base model with the adapter merged in (HF directory)")
    p.add_argument("adapter", help="adapter URI or local directory")
    p.add_argument("outdir", help="local directory (new or empty; --force replaces it)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR if it is a non-empty directory")
    p.add_argument("--base", help="base model directory (default: the manifest's base_model)")
    p.add_argument("--scale", type=float, default=1.0, help="adapter strength (multiplies alpha/r)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the base model run code from its own repository (never enabled by a manifest)")
    p.set_defaults(handler=merge)

    p = sub.add_parser("models", help="built-in models")
    models = p.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    e = models.add_parser("export", help="write a built-in model as a Hugging Face directory")
    e.add_argument("name", choices=list(api.BUILT_IN_MODELS))
    e.add_argument("dir", help="local directory (new or empty; --force replaces it)")
    e.add_argument("--force", action="store_true", help="replace DIR if it is a non-empty directory")
    e.set_defaults(handler=export_model)


def run(args: argparse.Namespace, console: Console) -> int:
    from ..errors import JobFailed
    from ..spec import load_spec
    from ..storage import Store, new_job_id
    from .paths import absolutize_local_paths
    from .progress import JobProgress

    spec = absolutize_local_paths(load_spec(args.spec, args.overrides), args.spec)
    # the preflight first: a spec that cannot run starts no Ray and writes nothing
    spec, _ = api.prepare(spec, on_notice=notice_printer(console))
    if api.served_cluster():
        if not args.direct:
            return _run_through_scheduler(args, spec, console)
        api.check_direct()
    store = Store.open(args.store)
    job_id = args.resume or new_job_id(spec.name)
    if args.resume:
        api.check_resume(store, spec, job_id)
    api.ensure_ray()
    if not args.json:
        console.print(f"store: {store.root}  job: {job_id}", highlight=False)
    try:
        with JobProgress(console, enabled=not args.json) as progress:
            outcome = api.run_job(spec, store, job_id, on_event=progress)
    except JobFailed as e:
        console.print(f"[red]job failed:[/] {e.reason}", highlight=False, soft_wrap=True)
        if api.has_checkpoint(store, spec.tenant, job_id):
            console.print(f"continue from its latest checkpoint: lorafarm run {args.spec} --resume {job_id}",
                          highlight=False, soft_wrap=True)
        if args.json:
            emit_json(api.run_summary(job_id, spec.tenant, e))
        return EXIT_FAILED
    m = outcome.metrics
    console.print(
        f"[green]succeeded[/] {job_id}: {m['steps']} steps, train loss {m['final_train_loss']:.4f}"
        + (f", eval loss {m['initial_eval_loss']:.4f} → {m['final_eval_loss']:.4f}" if m.get("final_eval_loss") else "")
        + f", {m['trainable_params']:,} trainable params, optimizer state {m['optimizer_state_bytes']:,} B",
        highlight=False,
    )
    if args.json:
        emit_json(api.run_summary(job_id, spec.tenant, outcome))
    else:
        print(outcome.adapter_uri)
    return EXIT_OK


def co_train(args: argparse.Namespace, console: Console) -> int:
    """Operators and benchmarks: a pack run here, outside any scheduler (the scheduler packs
    queued jobs itself where tenants allow it)."""
    from ..errors import JobFailed, SpecError
    from ..spec import load_spec
    from ..storage import Store, new_job_id
    from .paths import absolutize_local_paths

    specs = [api.prepare(absolutize_local_paths(load_spec(path, []), path), on_notice=notice_printer(console))[0]
             for path in args.specs]
    problems = api.pack_problems(specs)
    if problems:
        raise SpecError(problems)
    if api.served_cluster():
        api.check_direct()
    store = Store.open(args.store)
    ids = [new_job_id(s.name) for s in specs]
    api.ensure_ray()
    if not args.json:
        console.print(f"store: {store.root}  pack of {len(specs)}: {' '.join(ids)}", highlight=False)

    def progress(job_id: str, event) -> None:
        if not args.json and event.kind in ("phase", "done", "error"):
            console.print(f"{job_id}: {getattr(event, 'phase', None) or getattr(event, 'reason', None) or 'published'}",
                          highlight=False, soft_wrap=True)

    ended = api.run_pack(specs, store, ids, progress)
    summaries = [api.run_summary(j, s.tenant, ended[j]) for j, s in zip(ids, specs, strict=True)]
    for j, e in ended.items():
        if isinstance(e, JobFailed):
            console.print(f"[red]{j} failed:[/] {e.reason}", highlight=False, soft_wrap=True)
        elif not args.json:
            console.print(f"[green]succeeded[/] {j}: {e.metrics['steps']} steps, train loss "
                          f"{e.metrics['final_train_loss']:.4f}  {e.adapter_uri}", highlight=False)
    if args.json:
        emit_json({"jobs": summaries})
    return EXIT_OK if all(not isinstance(e, JobFailed) for e in ended.values()) else EXIT_FAILED


def _run_through_scheduler(args: argparse.Namespace, spec, console: Console) -> int:
    """``run`` on a served cluster: queue the spec with the scheduler and follow it, like ``submit --wait``."""
    from ..errors import SpecError
    from .service_cmds import wait_for

    if args.resume:
        raise SpecError(["--resume: this cluster runs a lorafarm scheduler, which resumes its own jobs — `lorafarm "
                         "submit` the spec (or, as an operator with the admin key, add --direct)"])
    summary = api.scheduler_call("submit", spec.model_dump(mode="json"))
    job_id = summary["job_id"]
    console.print(f"this cluster runs a lorafarm scheduler: submitted {job_id} to it (quota, trust and keys apply; "
                  "operators with the admin key may add --direct)", highlight=False, soft_wrap=True)
    if args.store:
        console.print(f"[yellow]warning:[/] --store {args.store} ignored: the scheduler writes to its own store",
                      highlight=False, soft_wrap=True)
    return wait_for(job_id, console, args.json, cancel_on_signal=True)


def validate(args: argparse.Namespace, console: Console) -> int:
    from ..spec import load_spec

    report = api.preflight(load_spec(args.spec, args.overrides))
    if args.json:
        emit_json(report)
    else:
        notice = notice_printer(console)
        for message in report.get("notices", []):
            notice(message)
        for key, value in report.items():
            if key != "notices":
                console.print(f"{key}: {value}", highlight=False)
        console.print("[green]ok:[/] the spec is runnable")
    return EXIT_OK


def schema(args: argparse.Namespace, console: Console) -> int:
    from ..spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def pull(args: argparse.Namespace, console: Console) -> int:
    is_job_id = not ("://" in args.source or "/" in args.source or Path(args.source).exists())
    manifest = api.download_adapter(args.source, args.dest, args.force) if is_job_id else None
    if manifest is not None:  # --api: through the REST API, no store access needed
        uri = manifest["adapter_uri"]
    else:
        uri = api.adapter_source(args.source, args.store, args.tenant)
        manifest = api.pull(uri, args.dest, force=args.force)
    if args.json:
        emit_json({"adapter_uri": uri, "dest": str(Path(args.dest).resolve()), "files": manifest["files"]})
    else:
        console.print(f"pulled {uri} → {args.dest} ({len(manifest['files'])} files, sha256 verified)")
    return EXIT_OK


def merge(args: argparse.Namespace, console: Console) -> int:
    out = api.merge(args.adapter, args.outdir, base=args.base, scale=args.scale, force=args.force,
                    trust_remote_code=args.trust_remote_code)
    console.print(f"merged model written to {out}")
    return EXIT_OK


def export_model(args: argparse.Namespace, console: Console) -> int:
    out = api.export_model(args.name, args.dir, force=args.force)
    console.print(f"wrote {args.name} to {out}")
    return EXIT_OK
