"""The public API the command line calls: run a job, check it, fetch and merge its adapter, and
talk to the scheduler — plain arguments in, plain results out.

The CLI imports this module, :mod:`lorafarm.spec`, :mod:`lorafarm.storage`,
:mod:`lorafarm.errors`, :mod:`lorafarm.events` and the user-facing libraries
:mod:`lorafarm.use`, :mod:`lorafarm.ops`, :mod:`lorafarm.sim` — never the worker, model,
adapter or scheduler internals. Every heavy import (Ray, torch, transformers) happens inside
the function that needs it (storage and pydantic too), so ``import lorafarm.api`` is cheap and
``lorafarm --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AdapterError, JobFailed, LorafarmError
from .events import Event, RunOutcome

if TYPE_CHECKING:
    from .spec import JobSpec
    from .storage import Store

# -- one job, in this process ------------------------------------------------------------------


def ensure_ray() -> None:
    """Join ``RAY_ADDRESS``'s cluster when set, else start a local one."""
    from .worker.launch import ensure_ray as start

    start()


def run_job(spec: JobSpec, store: Store, job_id: str, on_event: Callable[[Event], None]) -> RunOutcome:
    """Run ``spec`` to a published adapter on the current Ray cluster (``ensure_ray`` first);
    raise :class:`JobFailed` with the reason when it fails."""
    from .worker.launch import run_job as launch

    return launch(spec, store, job_id=job_id, on_progress=on_event)


def pack_problems(specs: list[JobSpec]) -> list[str]:
    """Why ``specs`` cannot train as one pack (every reason, naming the field), [] when they can."""
    from .cotrain.compat import pack_problems as problems

    return problems(specs)


def run_pack(specs: list[JobSpec], store: Store, job_ids: list[str],
             on_event: Callable[[str, Event], None]) -> dict[str, RunOutcome | JobFailed]:
    """Train ``specs`` as one pack on the current Ray cluster: each member's outcome (or its
    :class:`JobFailed`), by job id; each publishes the adapter it would get alone."""
    from .cotrain.launch import run_pack as launch

    return launch(specs, store, job_ids=job_ids, on_progress=on_event)


def run_summary(job_id: str, tenant: str, ended: RunOutcome | JobFailed) -> dict[str, Any]:
    """``lorafarm run --json``'s object: job_id, tenant, state, adapter_uri, metrics, reason."""
    if isinstance(ended, JobFailed):
        ended = RunOutcome.failed(ended.reason)
    return {"job_id": job_id, "tenant": tenant, "state": str(ended.state), "adapter_uri": ended.adapter_uri,
            "metrics": ended.metrics, "reason": ended.reason}


def has_checkpoint(store: Store, tenant: str, job_id: str) -> bool:
    """Whether the job left a resumable checkpoint in ``store`` (``lorafarm run --resume``)."""
    from .worker.checkpoints import latest_checkpoint

    return latest_checkpoint(store.job_uri(tenant, job_id)) is not None


def check_resume(store: Store, spec: JobSpec, job_id: str) -> None:
    """Refuse ``lorafarm run --resume JOB_ID`` before anything starts (:class:`SpecError`): the
    job has no checkpoint, or its latest was made for a spec that computes something else —
    naming every changed field (:func:`lorafarm.spec.resume_differences`)."""
    import json

    from .errors import SpecError
    from .spec import resume_digest, resume_refusal
    from .storage import join, read_bytes
    from .worker.checkpoints import latest_checkpoint

    ref = latest_checkpoint(store.job_uri(spec.tenant, job_id))
    if ref is None:
        raise SpecError([f"--resume: job {job_id!r} of tenant {spec.tenant!r} has no checkpoint in {store.root} — "
                         "check the job id and --store (checkpoints are under <store>/<tenant>/<job-id>/checkpoints/)"])
    if ref.marker.get("resume_digest") == resume_digest(spec):
        return
    try:
        saved = json.loads(read_bytes(join(ref.uri, CHECKPOINT_STATE))).get("spec")
    except (LorafarmError, ValueError, AttributeError):
        saved = None  # an older checkpoint, or one that cannot be read: no field names to give
    raise SpecError([f"--resume: {job_id}'s checkpoint step-{ref.step} was {resume_refusal(saved, spec)}"])


CHECKPOINT_STATE = "state.json"  # lorafarm.worker.zero_state.STATE, without importing torch


def prepare(spec: JobSpec, on_notice: Callable[[str], None] | None = None) -> tuple[JobSpec, dict[str, Any]]:
    """The preflight every job passes before anything is queued, started or written — the one
    that ``validate``, ``run`` and ``submit`` share: data readable with the right columns, base
    and target modules found, a sample encodes with labels; every problem at once
    (:class:`~lorafarm.errors.PreflightError`, exit 2). Returns the spec to run (intervals
    longer than the run capped) and the report; each cap's notice goes to ``on_notice``."""
    from .preflight import check

    spec, report = check(spec)
    for notice in report["notices"]:
        if on_notice is not None:
            on_notice(notice)
    return spec, report


def preflight(spec: JobSpec) -> dict[str, Any]:
    """``lorafarm validate``'s dry run: counts, steps per epoch, rough ETA, ``notices``; raises every problem."""
    return prepare(spec)[1]


# -- adapters and models ---------------------------------------------------------------------


def adapter_source(source: str, store: str | None = None, tenant: str | None = None) -> str:
    """An adapter URI as given (a URI or a local path), or the adapter of job id ``source``:
    asked of the scheduler when neither ``store`` nor ``tenant`` is given, else (or when no
    scheduler is reachable) looked up in the store."""
    from .storage import Store, normalize

    if "://" in source or "/" in source or Path(source).exists():
        return normalize(source)
    if not store and not tenant:
        try:
            summary = scheduler_call("status", source)
            if summary.get("adapter_uri"):
                return summary["adapter_uri"]
            raise AdapterError(f"job {source} is {summary['state']} and has no adapter — "
                               f"pull it after it succeeds (`lorafarm status {source}`)")
        except AdapterError:
            raise
        except LorafarmError:
            pass  # no scheduler reachable: fall back to the default store
    return Store.open(store).find_job(source, tenant) + "/adapter"


def pull(adapter_uri: str, dest: str | Path, force: bool = False) -> dict[str, Any]:
    """Download an adapter, every file sha256-verified against its manifest; returns the manifest.
    ``dest`` must be new or empty unless ``force`` (then it is replaced whole)."""
    from .adapter.save import pull as download

    return download(adapter_uri, dest, force=force)


def merge(adapter: str, outdir: str, base: str | None = None, scale: float = 1.0, force: bool = False,
          trust_remote_code: bool = False) -> Path:
    """Write ``base`` (default: the manifest's) with the adapter merged in, as a HF directory; the
    base's own code runs only with ``trust_remote_code``, whatever the manifest says."""
    from .adapter.merge import merge_adapter

    return merge_adapter(adapter, outdir, base=base, scale=scale, force=force, trust_remote_code=trust_remote_code)


BUILT_IN_MODELS = ("tiny-llama",)


def export_model(name: str, directory: str | Path, force: bool = False) -> Path:
    """Write a built-in model (``BUILT_IN_MODELS``) as a Hugging Face directory."""
    from .model.tiny import export

    if name not in BUILT_IN_MODELS:
        raise LorafarmError(f"{name}: no such built-in model — use one of {', '.join(BUILT_IN_MODELS)}")
    return export(directory, force=force)


# -- the scheduler ---------------------------------------------------------------------------


def scheduler_call(method: str, *args: Any, timeout: float = 60.0) -> Any:
    """Call a method of the cluster's scheduler; lorafarm errors raised inside it come back as they are."""
    from .scheduler import client

    return client.call(method, *args, timeout=timeout)


def submit(spec: JobSpec, on_notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Queue ``spec`` with the scheduler after the same preflight as ``run`` (:func:`prepare`,
    here in the submitting process: a refused spec is never queued); returns the job's
    summary (``job_id`` ...), with the preflight's ``notices``. The spec travels in its JSON
    form: the scheduler validates whatever it is sent (a trust boundary)."""
    spec, report = prepare(spec, on_notice)
    summary = scheduler_call("submit", spec.model_dump(mode="json"))
    return {**summary, "notices": report["notices"]} if isinstance(summary, dict) else summary


def configure_access(key_file: str | None = None, api_url: str | None = None) -> None:
    """The caller's API key (``--key-file``; else ``$LORAFARM_API_KEY``) and the REST API to use
    (``--api``; else ``$LORAFARM_API``; none: Ray) for every scheduler call after this."""
    if key_file is not None:
        from .auth import set_client_key

        set_client_key(key_file)
    if api_url:
        from .scheduler.client import set_api

        set_api(api_url)


def served_cluster() -> bool:
    """Whether scheduler calls have a scheduler to go to: ``--api`` given, or one on ``RAY_ADDRESS``'s cluster
    (without ``RAY_ADDRESS`` a run starts a local cluster of its own)."""
    import os

    from .scheduler import client

    if client.api_url():
        return True
    if not os.environ.get("RAY_ADDRESS"):
        return False
    if not _listening(os.environ["RAY_ADDRESS"]):  # Ray's own retries take minutes to give up on nothing
        return False
    try:
        client.scheduler()
    except LorafarmError:
        return False
    return True


def _listening(address: str, timeout: float = 3.0) -> bool:
    """Whether anything accepts a connection at ``address`` (``host:port``, ``ray://host:port``);
    True for what cannot be probed (``auto``, a bare host)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_direct() -> None:
    """``run --direct`` on a served cluster: only with the admin key when the tenants file lists keys."""
    from .auth import Forbidden

    who = scheduler_call("whoami")
    if who["keys"] and not who["admin"]:
        raise Forbidden("--direct: runs outside the scheduler's quota and checks, so it needs the admin key "
                        "(admin_keys in the tenants file) — drop --direct to run through the scheduler")


def download_adapter(job_id: str, dest: str | Path, force: bool = False) -> dict[str, Any] | None:
    """With ``--api``: job ``job_id``'s adapter downloaded through the REST API into ``dest``, every
    file sha256-checked (returns its manifest, with ``adapter_uri``). None without ``--api``."""
    from .scheduler import client

    if not client.api_url():
        return None
    from .auth import client_key
    from .rest.client import RestClient

    return RestClient(client.api_url(), client_key()).download_adapter(job_id, dest, force)


def start_scheduler(store_uri: str, tenants_text: str | None, metrics_port: int | None,
                    hang_timeout_s: float, reserve_cpus: float, api_port: int | None = None) -> bool:
    """Start the cluster's scheduler (with the tenant REST API on ``api_port``); False when one
    is already running."""
    from .scheduler import client

    _, created = client.serve(store_uri, tenants_text, metrics_port, hang_timeout_s, reserve_cpus, api_port)
    return created
