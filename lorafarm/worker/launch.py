"""Drive one job on Ray Train from the caller's process: prepare data, start the gang of
workers, stream their progress, return the published adapter's manifest.

``<store>/<tenant>/<job-id>/history.jsonl`` is the job's recorded history: one JSON object per
optimizer step, in step order, rewritten every few seconds while the job trains and once more
when it ends — succeeded or failed; a cancelled job keeps what the last rewrite held. Keys:

- ``step`` (int, 1-based), ``total_steps`` (int), ``loss`` (float: token-mean train loss of the
  step's global batch), ``lr`` (float: the learning rate the step used), ``tokens_per_s`` (float:
  tokens of all ranks ÷ step time), ``step_time_s`` (float), ``tokens_seen`` (int, cumulative);
- ``eval_loss`` (float) on steps that evaluated (every ``training.eval_every_steps``, and the last
  step carries the final evaluation);
- the first line also: ``trainable_params``, ``total_params``, ``optimizer_state_bytes``,
  ``optimizer_numel`` (ints);
- on GPU only: ``gpu_memory_bytes`` (peak allocated on rank 0) and ``mfu`` (model FLOPs
  utilisation, see :mod:`lorafarm.ops.accel`; absent for a device of unknown peak).

Readers ignore keys they do not know (``lorafarm plot`` reads it: :mod:`lorafarm.ops.history`).
"""

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
HISTORY_FILE = "history.jsonl"
HISTORY_FLUSH_S = 5.0  # rewrite history.jsonl at most this often while a job trains


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

    from ..rayio import route_ray_messages_to_stderr

    if ray.is_initialized():
        return
    route_ray_messages_to_stderr()
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
    max_failures: int | None = None,
    control: Any = None,
) -> JobResult:
    """Run ``spec`` to a published adapter. Raises :class:`JobFailed` with the reason for any
    failure after the spec was accepted (data, model, workers, verification, storage).

    A ``job_id`` whose directory holds checkpoints resumes from the latest one. Worker failures
    are survived ``max_failures`` times (default: ``training.max_failures``) by restarting the
    worker group from the latest checkpoint. ``control`` (an actor with ``stop_requested()``)
    lets the caller preempt the job: it checkpoints and the result's state is ``PREEMPTED``."""
    if max_failures is None:
        max_failures = spec.training.max_failures
    try:
        return _run_job(spec, store, job_id=job_id, on_progress=on_progress, max_failures=max_failures,
                        control=control)
    except JobFailed:
        raise
    except LorafarmError as e:
        raise JobFailed(str(e)) from e


def _run_job(spec, store, *, job_id, on_progress, max_failures, control) -> JobResult:
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
        control=control,
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
    preempted: dict[str, Any] | None = None
    error_reason: str | None = None
    history = _History(join(job_uri, HISTORY_FILE))
    try:
        while True:
            try:
                event = progress.get(timeout=0.5)
            except (std_queue.Empty, ray.util.queue.Empty):
                if outcome.get("finished") and progress.empty():
                    break
                history.flush_if_due()
                continue
            if event["kind"] == "step":
                history.add({k: v for k, v in event.items() if k != "kind"})
            elif event["kind"] == "done":
                done = event
                history.finish(event.get("history", []), event["manifest"].get("metrics", {}))
            elif event["kind"] == "error":
                error_reason = event["reason"]
            elif event["kind"] == "preempted":
                preempted = event
            notify(event)
        thread.join()
    finally:
        history.flush()  # also when the job failed: the steps it made are worth a plot
        try:
            ray.kill(progress.actor)
        except Exception:  # noqa: BLE001
            pass
    if preempted is not None and "error" not in outcome:
        return JobResult(job_id=job_id, tenant=spec.tenant, state="PREEMPTED", adapter_uri=None,
                         metrics={"preempted_at_step": preempted["step"]})
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


class _History:
    """The job's ``history.jsonl`` (schema in the module docstring), built from rank 0's step
    events and rewritten whole (atomic on a local store, one PUT on S3) every few seconds."""

    def __init__(self, uri: str):
        self.uri = uri
        self.lines: list[dict[str, Any]] = []
        self.written = 0
        self.last_flush = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(record)
        self.flush_if_due()

    def finish(self, full: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        """The worker's own list is complete (a streamed event may have been dropped); the final
        evaluation, made after the last step, goes on the last line."""
        if len(full) >= len(self.lines):
            self.lines = [dict(r) for r in full]
            self.written = -1  # rewrite
        final_eval = metrics.get("final_eval_loss")
        if self.lines and final_eval is not None and "eval_loss" not in self.lines[-1]:
            self.lines[-1]["eval_loss"] = final_eval
            self.written = -1

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last_flush >= HISTORY_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.lines or self.written == len(self.lines):
            return
        try:
            write_bytes(self.uri, "".join(json.dumps(r) + "\n" for r in self.lines).encode())
            self.written = len(self.lines)
        except Exception:  # noqa: BLE001 - the history is a record for plots, never a reason to fail a job
            pass


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
