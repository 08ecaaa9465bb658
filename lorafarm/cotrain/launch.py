"""Drive one pack on Ray Train from the caller's process: each member's data prepared (a
member whose data is unusable fails alone, naming the file and row), one gang running
:class:`~lorafarm.cotrain.pack.PackRecipe`, each member's events streamed to its own
``history.jsonl`` and to ``on_progress(job_id, event)``, and one outcome per member.

Not yet: restarts of a failed gang (members have no checkpoints of their own yet, so a pack
runs with ``max_failures: 0``), placement plans from the scheduler.
"""

from __future__ import annotations

import queue as std_queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import JobFailed, LorafarmError
from ..events import DataReady, Done, Event, Phase, Preempted, RunOutcome, RunState, Step, WorkerError
from ..spec import JobSpec
from ..storage import Store, new_job_id
from ..worker.recipe import WorkerConfig
from .compat import PACK_FAILED, pack_problems

PackProgressFn = Callable[[str, Event], None]


def run_pack(specs: list[JobSpec], store: Store, *, job_ids: list[str] | None = None,
             on_progress: PackProgressFn | None = None, controls: dict[str, Any] | None = None,
             ) -> dict[str, RunOutcome | JobFailed]:
    """Train ``specs`` as one pack: ``{job id: SUCCEEDED outcome, PREEMPTED at its checkpoint's
    step (its ``controls[job id].stop_requested()`` said so), or the JobFailed of that member}``,
    in the specs' order. A job id whose directory holds checkpoints resumes from the latest
    (made alone or in a pack). Raises ``ValueError`` when they cannot share a pack."""
    import ray
    from ray.util.queue import Queue

    from ..data import prepare
    from ..model import resolve_base
    from ..worker.launch import _this_node, forwarded_env

    problems = pack_problems(specs)
    if problems:
        raise ValueError("these jobs cannot train as one pack: " + "; ".join(problems))
    ids = job_ids or [new_job_id(s.name) for s in specs]
    notify = on_progress or (lambda _j, _e: None)
    controls = controls or {}
    started = time.time()
    results: dict[str, RunOutcome | JobFailed] = {}
    configs: list[WorkerConfig] = []
    for spec, job_id in zip(specs, ids, strict=True):
        store.write_spec(spec.tenant, job_id, spec)
        notify(job_id, Phase("preparing data"))
        try:
            prepared = prepare(spec, str(resolve_base(spec.base_model)), store,
                               on_progress=lambda line, j=job_id: notify(j, Phase(line)))
        except LorafarmError as e:  # its data alone: the others still train
            results[job_id] = JobFailed(str(e))
            continue
        notify(job_id, DataReady(stats=prepared.stats, cache_hit=prepared.cache_hit))
        configs.append(WorkerConfig(
            spec=spec, job_id=job_id, adapter_uri=store.adapter_uri(spec.tenant, job_id),
            job_uri=store.job_uri(spec.tenant, job_id), train_rows_uri=prepared.train_uri,
            eval_rows_uri=prepared.eval_uri, data_stats=prepared.stats, dataset_fingerprint=prepared.fingerprint,
            progress=Queue(actor_options={"num_cpus": 0, "scheduling_strategy": _this_node()}),
            started_at=started, env=forwarded_env(), control=controls.get(job_id)))
    if configs:
        results.update(_train(configs, notify))
    for q in (c.progress for c in configs):
        try:
            ray.kill(q.actor)
        except Exception:  # noqa: BLE001
            pass
    return {j: results[j] for j in ids}


def _train(configs: list[WorkerConfig], notify: PackProgressFn) -> dict[str, RunOutcome | JobFailed]:
    import ray

    from ..ops.history import HistoryWriter

    for c in configs:
        notify(c.job_id, Phase(f"starting {c.spec.resources.workers} worker(s), co-trained with "
                              f"{len(configs) - 1} other job(s)"))
    trainer = _trainer(configs)
    fit_error: list[BaseException] = []
    finished = threading.Event()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - each member's outcome says it
            fit_error.append(e)
        finally:
            finished.set()

    threading.Thread(target=fit, name="fit-pack", daemon=True).start()
    histories = {c.job_id: HistoryWriter(c.job_uri) for c in configs}
    done: dict[str, Done] = {}
    errors: dict[str, str] = {}
    preempted: dict[str, int] = {}
    try:
        while True:
            got = False
            for c in configs:
                try:
                    event = c.progress.get_nowait()
                except (std_queue.Empty, ray.util.queue.Empty):
                    continue
                got = True
                match event:
                    case Step():
                        histories[c.job_id].add(event.record())
                    case Done():
                        done[c.job_id] = event
                        histories[c.job_id].finish(event.history, event.manifest.get("metrics", {}))
                    case WorkerError():
                        errors.setdefault(c.job_id, event.reason)
                    case Preempted():
                        preempted[c.job_id] = event.step
                notify(c.job_id, event)
            if not got:
                if finished.is_set() and all(c.progress.empty() for c in configs):
                    break
                for h in histories.values():
                    h.flush_if_due()
                time.sleep(0.2)
    finally:
        for h in histories.values():
            h.flush()
    out: dict[str, RunOutcome | JobFailed] = {}
    from ..worker.launch import _reason

    for c in configs:
        if c.job_id in preempted and c.job_id not in errors:
            out[c.job_id] = RunOutcome(RunState.PREEMPTED, step=preempted[c.job_id])
        elif c.job_id in done:
            d = done[c.job_id]
            out[c.job_id] = RunOutcome(RunState.SUCCEEDED, adapter_uri=c.adapter_uri, metrics=d.manifest["metrics"],
                                       manifest=d.manifest)
        else:
            out[c.job_id] = JobFailed(errors.get(c.job_id) or PACK_FAILED + (
                _reason(fit_error[0] if fit_error else None) or "training ended without an adapter"))
    return out


def _trainer(configs: list[WorkerConfig]):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..model import cache_root
    from ..worker.launch import PLACEMENT_STRATEGY

    r = configs[0].spec.resources
    resources = {"CPU": max(c.spec.resources.cpus_per_worker for c in configs)}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    return TorchTrainer(
        pack_loop_per_worker,
        train_loop_config={"pack": configs},
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker=resources, placement_strategy=PLACEMENT_STRATEGY[r.placement],
                                     accelerator_type=r.accelerator_type),
        run_config=RunConfig(name="pack-" + configs[0].job_id, storage_path=str(cache_root() / "ray_results"),
                             failure_config=FailureConfig(max_failures=0)),
    )


def pack_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: one pack recipe per rank; a failure of the whole gang is every
    live member's failure (each member's own failures are reported by the recipe)."""
    import os

    from ..worker.recipe import _placement_group_id, _rank_nodes, distributed_env_from_ray
    from .pack import PackRecipe

    configs: list[WorkerConfig] = config["pack"]
    for key, value in configs[0].env.items():
        os.environ.setdefault(key, value)
    rank, world = distributed_env_from_ray()
    recipe = PackRecipe(configs, rank, world)
    # the gang's placement group and nodes, so that the scheduler follows (and frees) what it holds
    recipe.group = {"placement_group": _placement_group_id(), "nodes": _rank_nodes(world)}
    try:
        recipe.run()
    except Exception as e:
        reason = str(e) if isinstance(e, LorafarmError) else f"{type(e).__name__}: {e}"
        for m in recipe.members:
            if m.state == "training":
                recipe.send(m, WorkerError(reason=PACK_FAILED + reason))
        raise
