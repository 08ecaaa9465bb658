"""Drive one job on Ray Train from the caller's process: prepare data, start the gang of
workers, stream their events (:mod:`lorafarm.events`) to ``on_progress`` and the job's
``history.jsonl`` (:mod:`lorafarm.ops.history`), and return how the run ended.
"""

from __future__ import annotations

import queue as std_queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import JobFailed, LorafarmError
from ..events import DataReady, Done, Event, Phase, Preempted, RunOutcome, RunState, Step, WorkerError
from ..ops.history import HistoryWriter
from ..spec import JobSpec
from ..storage import Store, new_job_id
from .recipe import WorkerConfig, train_loop_per_worker

ProgressFn = Callable[[Event], None]


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
    placement: tuple[tuple[str, int], ...] = (),
) -> RunOutcome:
    """Run ``spec`` to a published adapter: a SUCCEEDED outcome with its URI, metrics and
    manifest. Raises :class:`JobFailed` with the reason for any failure after the spec was
    accepted (data, model, workers, verification, storage).

    A ``job_id`` whose directory holds checkpoints resumes from the latest one. Worker failures
    are survived ``max_failures`` times (default: ``training.max_failures``) by restarting the
    worker group from the latest checkpoint. ``control`` (an actor with ``stop_requested()``)
    lets the caller preempt the job: it checkpoints and the outcome is PREEMPTED at its step.
    ``placement`` ((Ray node id, workers), ...: the scheduler's plan) pins each worker to its node."""
    if max_failures is None:
        max_failures = spec.training.max_failures
    try:
        return _run_job(spec, store, job_id=job_id or new_job_id(spec.name), notify=on_progress or (lambda _e: None),
                        max_failures=max_failures, control=control, placement=placement)
    except JobFailed:
        raise
    except LorafarmError as e:
        raise JobFailed(str(e)) from e


def _run_job(spec: JobSpec, store: Store, *, job_id: str, notify: ProgressFn, max_failures: int,
             control: Any, placement: tuple[tuple[str, int], ...] = ()) -> RunOutcome:
    import ray
    from ray.util.queue import Queue

    from ..data import prepare
    from ..model import resolve_base

    started = time.time()
    job_uri = store.job_uri(spec.tenant, job_id)
    adapter_uri = store.adapter_uri(spec.tenant, job_id)
    store.write_spec(spec.tenant, job_id, spec)

    notify(Phase("preparing data"))
    prepared = prepare(spec, str(resolve_base(spec.base_model)), store,
                       on_progress=lambda line: notify(Phase(line)))  # rows/s and ETA while tokenizing
    notify(DataReady(stats=prepared.stats, cache_hit=prepared.cache_hit))

    progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": _this_node()})
    cfg = WorkerConfig(
        spec=spec,
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
    trainer = _trainer(cfg, max_failures, placement)
    notify(Phase(f"starting {spec.resources.workers} worker(s)"))
    fit_error: list[BaseException] = []
    finished = threading.Event()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            fit_error.append(e)
        finally:
            finished.set()

    thread = threading.Thread(target=fit, name=f"fit-{job_id}", daemon=True)
    thread.start()
    done: Done | None = None
    preempted: Preempted | None = None
    error_reason: str | None = None
    fatal_reason: str | None = None  # the first non-retryable error (any rank's), which ends the job
    history = HistoryWriter(job_uri)
    try:
        while True:
            try:
                event = progress.get(timeout=0.5)
            except (std_queue.Empty, ray.util.queue.Empty):
                if finished.is_set() and progress.empty():
                    break
                history.flush_if_due()
                continue
            match event:
                case Step():
                    history.add(event.record())
                case Done():
                    done = event
                    history.finish(event.history, event.manifest.get("metrics", {}))
                case WorkerError():
                    error_reason = event.reason
                    if not event.retryable and fatal_reason is None:
                        fatal_reason = event.reason
                case Preempted():
                    preempted = event
            notify(event)
        thread.join()
    finally:
        history.flush()  # also when the job failed: the steps it made are worth a plot
        try:
            ray.kill(progress.actor)
        except Exception:  # noqa: BLE001
            pass
    if preempted is not None and not fit_error:
        return RunOutcome(RunState.PREEMPTED, step=preempted.step)
    if fit_error or done is None:
        raise JobFailed(fatal_reason or error_reason or _reason(fit_error[0] if fit_error else None)
                        or "training ended without an adapter")
    return RunOutcome(RunState.SUCCEEDED, adapter_uri=adapter_uri, metrics=done.manifest["metrics"],
                      manifest=done.manifest)


# resources.placement -> Ray's placement group strategy. The soft strategies, not STRICT_*: the
# scheduler admits a gang only where its workers fit (node-aware), and a strict strategy would leave
# a gang unplaced whenever Ray's view lags (or, for spread, whenever workers outnumber nodes).
PLACEMENT_STRATEGY = {"pack": "PACK", "spread": "SPREAD"}


def _trainer(cfg: WorkerConfig, max_failures: int, placement: tuple[tuple[str, int], ...] = ()):
    """Ray Train's controller for the job: ``resources.workers`` ranks of the recipe."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..model import cache_root

    r = cfg.spec.resources
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": cfg},
        scaling_config=ScalingConfig(
            num_workers=r.workers, use_gpu=r.gpus_per_worker > 0, resources_per_worker=resources,
            placement_strategy=PLACEMENT_STRATEGY[r.placement], accelerator_type=r.accelerator_type,
            label_selector=_pinned(placement, r.workers),
        ),
        run_config=RunConfig(
            name=cfg.job_id,
            storage_path=str(cache_root() / "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )


def _pinned(placement: tuple[tuple[str, int], ...], workers: int) -> list[dict[str, str]] | None:
    """One label selector per worker pinning it to the node the scheduler planned for it, so
    Ray places the gang exactly where the scheduler counted it (None: no plan)."""
    selectors = [{"ray.io/node-id": node} for node, n in placement for _ in range(n)]
    return selectors if len(selectors) == workers else None


def _this_node():
    """Pin to the caller's node: the job's event queue must not die with a worker node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


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
