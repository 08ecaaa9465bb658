"""Drive one job on Ray Train from the caller's process: prepare data, start the gang of
workers, stream their progress, return the published adapter's manifest."""

from __future__ import annotations

import json
import queue as std_queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import JobFailed, LorafarmError
from ..spec import JobSpec, dump_yaml
from ..storage import Store, join, new_job_id, write_bytes
from .recipe import WorkerConfig, train_loop_per_worker

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class JobResult:
    job_id: str
    tenant: str
    state: str
    adapter_uri: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    manifest: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "tenant": self.tenant,
            "state": self.state,
            "adapter_uri": self.adapter_uri,
            "metrics": self.metrics,
            "reason": self.reason,
        }


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join ``RAY_ADDRESS``'s cluster when set, else start a local one."""
    import os

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or max(4, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)


def run_job(
    spec: JobSpec,
    store: Store,
    *,
    job_id: str | None = None,
    on_progress: ProgressFn | None = None,
    max_failures: int = 0,
) -> JobResult:
    """Run ``spec`` to a published adapter. Raises :class:`JobFailed` with the reason for any
    failure after the spec was accepted (data, model, workers, verification, storage)."""
    try:
        return _run_job(spec, store, job_id=job_id, on_progress=on_progress, max_failures=max_failures)
    except JobFailed:
        raise
    except LorafarmError as e:
        raise JobFailed(str(e)) from e


def _run_job(spec, store, *, job_id, on_progress, max_failures) -> JobResult:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from ..data import prepare
    from ..model import cache_root, resolve_base

    started = time.time()
    job_id = job_id or new_job_id(spec.name)
    job_uri = store.job_uri(spec.tenant, job_id)
    adapter_uri = store.adapter_uri(spec.tenant, job_id)
    write_bytes(join(job_uri, "spec.yaml"), dump_yaml(spec).encode())
    notify = on_progress or (lambda _e: None)

    notify({"kind": "phase", "phase": "preparing data"})
    base_dir = resolve_base(spec.base_model)
    prepared = prepare(spec, str(base_dir), store)
    notify({"kind": "data", "stats": prepared.stats, "cache_hit": prepared.cache_hit})

    progress = Queue(actor_options={"num_cpus": 0})
    cfg = WorkerConfig(
        spec=spec.model_dump(mode="json"),
        job_id=job_id,
        adapter_uri=adapter_uri,
        job_uri=job_uri,
        train_rows_uri=prepared.train_uri,
        eval_rows_uri=prepared.eval_uri,
        data_stats=prepared.stats,
        dataset_fingerprint=prepared.fingerprint,
        progress=progress,
        started_at=started,
        env=forwarded_env(),
    )
    r = spec.resources
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": cfg},
        scaling_config=ScalingConfig(
            num_workers=r.workers, use_gpu=r.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=job_id,
            storage_path=str(cache_root() / "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    notify({"kind": "phase", "phase": f"starting {r.workers} worker(s)"})
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = e
        finally:
            outcome["finished"] = True

    thread = threading.Thread(target=fit, name=f"fit-{job_id}", daemon=True)
    thread.start()
    done: dict[str, Any] | None = None
    error_reason: str | None = None
    history: list[dict[str, Any]] = []
    while True:
        try:
            event = progress.get(timeout=0.5)
        except (std_queue.Empty, ray.util.queue.Empty):
            if outcome.get("finished") and progress.empty():
                break
            continue
        if event["kind"] == "done":
            done = event
            history = event.get("history", [])
        elif event["kind"] == "error":
            error_reason = error_reason or event["reason"]
        notify(event)
    thread.join()
    try:
        ray.kill(progress.actor)
    except Exception:  # noqa: BLE001
        pass
    if history:
        write_bytes(join(job_uri, "history.jsonl"), "".join(json.dumps(h) + "\n" for h in history).encode())
    if "error" in outcome or done is None:
        reason = error_reason or _reason(outcome.get("error")) or "training ended without an adapter"
        raise JobFailed(reason)
    manifest = done["manifest"]
    return JobResult(
        job_id=job_id,
        tenant=spec.tenant,
        state="SUCCEEDED",
        adapter_uri=adapter_uri,
        metrics=manifest["metrics"],
        manifest=manifest,
    )


def _reason(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    if isinstance(exc, LorafarmError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


FORWARDED_ENV_PREFIXES = ("AWS_", "LORAFARM_", "HF_")


def forwarded_env() -> dict[str, str]:
    """Storage credentials/endpoints and lorafarm settings of the submitting process, so
    workers reach the same store (a worker keeps any value its node already sets)."""
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
