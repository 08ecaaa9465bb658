"""What a simulated job's ``estimated_duration`` is: the truth (``oracle``), nothing (``none``),
or what the scheduler's own :class:`~lorafarm.estimate.Estimator` would say (``estimator``).

With ``estimator``, a job's estimate is its steps × its shape's learned step time (the FLOPs
prior, calibrated, before any job of the shape has finished), exactly as the scheduler computes
it (:func:`lorafarm.estimate.request_estimate`); each finished job teaches the estimator its
measured step time. A job that has run (preempted, re-queued) knows its own step time: its
estimate is its remaining steps × that. Queued estimates are refreshed when their shape learns,
as the live scheduler's are on every tick. Jobs without a shape (a public trace) get none.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ..estimate import Estimator, request_estimate
from .trace import SimJob

MODES = ("oracle", "estimator", "none")


def mode_of(estimates: bool | str) -> str:
    if estimates is True:
        return "oracle"
    if estimates is False:
        return "none"
    if estimates not in MODES:
        raise ValueError(f"estimates: {estimates!r} — use one of {', '.join(MODES)}")
    return str(estimates)


class SimEstimates:
    """The simulator's estimates and what they got wrong."""

    def __init__(self, mode: bool | str, jobs: list[SimJob]):
        self.mode = mode_of(mode)
        self.estimator = Estimator()
        self.by_shape: dict[str, set[str]] = defaultdict(set)  # shape -> queued job ids (estimator mode)
        self.dirty: set[str] = set()
        self.at_start: dict[str, float] = {}  # job id -> estimate when it first started
        self.order: dict[str, int] = {}  # job id -> its index among its shape's jobs (submission order)
        seen: dict[str, int] = defaultdict(int)
        for j in jobs:
            if j.shape:
                self.order[j.job_id] = seen[j.shape]
                seen[j.shape] += 1

    def estimate(self, job: SimJob, remaining: float) -> float | None:
        if self.mode == "oracle":
            return remaining
        if self.mode == "none" or not job.shape or not job.steps:
            return None
        if remaining < job.duration:  # it ran: its own step time is measured
            return remaining
        return request_estimate(self.estimator, job.shape, job.steps, job.prior_step_s)

    def queued(self, job: SimJob) -> None:
        if self.mode == "estimator" and job.shape:
            self.by_shape[job.shape].add(job.job_id)

    def dequeued(self, job: SimJob) -> None:
        if job.shape:
            self.by_shape.get(job.shape, set()).discard(job.job_id)

    def started(self, job: SimJob, estimate: float | None) -> None:
        if estimate is not None and job.job_id not in self.at_start:
            self.at_start[job.job_id] = estimate

    def finished(self, job: SimJob) -> None:
        if self.mode == "estimator" and job.shape and job.steps:
            self.estimator.learn(job.shape, job.duration / job.steps, job.job_id)
            self.dirty.add(job.shape)

    def stale(self) -> set[str]:
        """Queued job ids whose shape learned since the last call."""
        out: set[str] = set()
        for shape in self.dirty:
            out |= self.by_shape.get(shape, set())
        self.dirty.clear()
        return out

    def errors(self, durations: dict[str, float], after: int = 100) -> dict[str, Any]:
        """Median |estimate/actual − 1| at start: over all jobs, and after the first ``after`` of each shape."""
        all_e, late = [], []
        for job_id, est in self.at_start.items():
            actual = durations[job_id]
            if actual <= 0 or not math.isfinite(est):
                continue
            e = abs(est / actual - 1.0)
            all_e.append(e)
            if self.order.get(job_id, 0) >= after:
                late.append(e)
        return {"mode": self.mode, "jobs": len(all_e),
                "median_abs_error": round(statistics.median(all_e), 4) if all_e else None,
                f"median_abs_error_after_{after}_of_shape": round(statistics.median(late), 4) if late else None,
                f"jobs_after_{after}_of_shape": len(late),
                "p90_abs_error": round(sorted(all_e)[int(0.9 * (len(all_e) - 1))], 4) if all_e else None}
