"""The scheduler's side of the estimator: job records in, estimates and ETAs out.

Pure (no Ray): :class:`~lorafarm.scheduler.core.SchedulerCore` calls it under its lock. Learns
from every Step its runners report (and, on recovery, from the records of jobs that ran under an
older scheduler), persists what it learned in ``<store>/_service/estimates.json`` whenever a
run ends, and gives each queued job the ``estimated_duration`` the policy orders by: the same
:func:`~lorafarm.estimate.request_estimate` the simulator calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .estimator import request_estimate
from .eta import EtaJob, queue_etas
from .persist import load_estimator, save_estimator
from .prior import flops_prior_step_s, model_params
from .shape import epochs_key, planned_steps, shape_of


@dataclass(frozen=True, slots=True)
class JobShape:
    key: str
    steps: int | None
    prior_s: float
    accelerator: str
    base_model: str
    epochs_key: str


class LiveEstimates:
    """Estimates for one scheduler's jobs (records: anything with ``job_id``, ``spec``,
    ``state``, ``progress``, ``started_at``, ``submitted_at``, ``gpus``, ``cpus``)."""

    def __init__(self, store_root: str):
        self.store_root = store_root
        self.estimator = load_estimator(store_root)
        self._shapes: dict[str, JobShape] = {}
        self._requests: dict[str, tuple[tuple, Any]] = {}  # job id -> (cache key, JobRequest)
        self._durations: dict[tuple, float | None] = {}  # (shape, steps, prior, accelerator) -> estimate, this generation
        self._durations_generation = -1

    # ------------------------------------------------------------ shapes
    def shape(self, record: Any) -> JobShape:
        s = self._shapes.get(record.job_id)
        if s is None:
            spec = record.spec
            res = spec.get("resources") or {}
            accel = res.get("accelerator_type") or "gpu"
            shape = shape_of(spec, accel)
            t = spec.get("training") or {}
            base = str(spec.get("base_model") or "tiny-llama")
            prior = flops_prior_step_s(
                model_params(base, self.estimator.params), int(t.get("global_batch_size") or 8),
                shape.seq_len, shape.workers, float(res.get("gpus_per_worker") or 0),
                float(res.get("cpus_per_worker") or 1), shape.packing, shape.grad_checkpointing, shape.accelerator)
            s = self._shapes[record.job_id] = JobShape(shape.key, planned_steps(spec), prior, shape.accelerator,
                                                       base, epochs_key(spec))
        return s

    def steps(self, record: Any) -> int | None:
        s = self.shape(record)
        total = (record.progress or {}).get("total_steps")
        return s.steps or (int(total) if total else None) or self.estimator.epoch_steps.get(s.epochs_key)

    # ------------------------------------------------------------ estimates
    def queued_estimate(self, record: Any) -> float | None:
        """Seconds the queued job will run: its planned steps (less those before its latest
        checkpoint) × its shape's step time."""
        s = self.shape(record)
        steps = self.steps(record)
        if steps and record.last_checkpoint_step:
            steps = max(1, steps - int(record.last_checkpoint_step))
        if self._durations_generation != self.estimator.generation:  # something learned: figures moved
            self._durations.clear()
            self._durations_generation = self.estimator.generation
        key = (s.key, steps, s.prior_s, s.accelerator)  # queued jobs share a few of these: one figure each
        if key not in self._durations:
            self._durations[key] = request_estimate(self.estimator, s.key, steps, s.prior_s, s.accelerator)
        return self._durations[key]

    def request(self, record: Any) -> Any:
        """``record.request(estimate)``, cached until the estimate can have changed (a tick with
        10,000 queued jobs rebuilds none of them when nothing was learned)."""
        key = (self.estimator.generation, record.last_checkpoint_step, record.priority, record.workers)
        hit = self._requests.get(record.job_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        req = record.request(self.queued_estimate(record))
        self._requests[record.job_id] = (key, req)
        return req

    def remaining(self, record: Any) -> float | None:
        """Seconds a running job has left (its own step times once it has some)."""
        s = self.shape(record)
        p = record.progress or {}
        left = self.estimator.remaining(record.job_id, p.get("step"), self.steps(record), s.prior_s)
        if left is None and record.job_id not in self.estimator.runs:
            return self.queued_estimate(record)
        return left

    # ------------------------------------------------------------ learning
    def started(self, record: Any) -> float | None:
        """The run starts; returns the estimate it starts with (kept on the record)."""
        s = self.shape(record)
        estimate = self.queued_estimate(record)
        self.estimator.started(record.job_id, s.key, self.steps(record), s.accelerator, s.prior_s)
        self._requests.pop(record.job_id, None)
        return estimate

    def step(self, record: Any, step: int, step_time_s: float, total_steps: int | None,
             total_params: int | None = None) -> None:
        s = self.shape(record)
        if total_params:
            self.estimator.note_params(s.base_model, total_params)
        if total_steps and s.steps is None:
            self.estimator.note_epoch_steps(s.epochs_key, total_steps)
        self.estimator.step(record.job_id, step, step_time_s, total_steps)

    def finished(self, record: Any, estimate_s: float | None) -> dict[str, float] | None:
        """The run ended: learn from it, persist, and return ``{estimate_s, actual_s, ratio}``
        (estimated training time at start vs the run's measured one) when both are known."""
        run = self.estimator.runs.get(record.job_id)
        measured = run.total_s if run is not None else 0.0
        steps = run.last_step if run is not None else 0
        self.estimator.finished(record.job_id)
        self.save()
        total = self.steps(record)
        if not estimate_s or not measured or not steps:
            return None
        if total and steps < total:  # preempted or failed part-way: compare like with like
            estimate_s = estimate_s * steps / total
        return {"estimate_s": round(estimate_s, 3), "actual_s": round(measured, 3),
                "ratio": round(estimate_s / measured, 4)}

    def learn_records(self, records: Iterable[Any]) -> None:
        """On recovery: jobs that reported a step time under an older scheduler and that the
        persisted file does not know yet (it is written when runs end; a crash loses the rest)."""
        for r in records:
            p = r.progress or {}
            step_s = p.get("step_time_s")
            if step_s and r.job_id not in self.estimator._folded_set:
                self.estimator.learn(self.shape(r).key, float(step_s), r.job_id)

    def save(self) -> None:
        try:
            save_estimator(self.store_root, self.estimator)
        except Exception:  # noqa: BLE001 - losing what was learned must never stop the scheduler
            pass

    def forget(self, job_id: str) -> None:
        self._shapes.pop(job_id, None)
        self._requests.pop(job_id, None)

    # ------------------------------------------------------------ ETAs
    def etas(self, records: Iterable[Any], now: float, total_cpus: float, total_gpus: float,
             order_key) -> dict[str, tuple[float | None, float | None]]:
        """``job id -> (eta_start, eta_end)`` for queued and running jobs; queued ones in
        ``order_key`` order (the policy's order of service, roughly)."""
        running, queued = [], []
        for r in records:
            state = getattr(r.state, "value", r.state)
            if state == "RUNNING":
                running.append(EtaJob(r.job_id, r.gpus, r.cpus, self.remaining(r)))
            elif state == "QUEUED":
                queued.append((order_key(r), EtaJob(r.job_id, r.gpus, r.cpus, self.queued_estimate(r))))
        queued.sort(key=lambda x: x[0])
        starts, ends = queue_etas(now, total_cpus, total_gpus, running, [j for _, j in queued])
        out: dict[str, tuple[float | None, float | None]] = {}
        for job_id, end in ends.items():
            start = starts.get(job_id)
            out[job_id] = (None if start is None or math.isinf(start) else round(start, 3),
                           None if end is None else round(end, 3))
        return out
