"""Learned step times per shape, and what they say about a job's duration and remaining time.

* **Per shape**: every job that ran to its end (succeeded, failed, preempted) contributes its mean step time (first step left out: it
  includes compilation and cache warm-up); the shape's step time is the median of the last
  :data:`WINDOW` jobs' means (a median, so one slow node does not move it).
* **No finished job of the shape yet**: the median of its running jobs' mean step times (once
  they measured :data:`MIN_RUNNING_STEPS` steps), else the FLOPs prior (:mod:`.prior`), scaled by the median ratio
  measured/prior of the shapes that have history on the same accelerator (the prior's error is
  mostly one factor per machine), unscaled when nothing has run at all.
* **A running job**: its remaining steps × its own recent step times (the mean of its last
  :data:`OWN_WINDOW` steps), blended with the shape's figure while it has run only a few steps.

State is plain JSON (:meth:`Estimator.to_json`), so it persists across scheduler restarts.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 64  # per-job means kept per shape
OWN_WINDOW = 20  # a running job's own recent steps
OWN_WEIGHT_STEPS = 3.0  # after this many own steps, the job's own figure weighs half
MIN_RUNNING_STEPS = 5  # a running job's steps before its shape's estimate uses them (no finished job yet)
VERSION = 1


@dataclass(frozen=True, slots=True)
class Estimate:
    """A duration estimate and where it came from (``history``, ``prior``, ``own``)."""

    step_s: float
    source: str
    jobs: int = 0  # jobs of the shape behind a ``history`` figure


@dataclass(slots=True)
class _Run:
    shape: str
    total_steps: int | None
    steps: int = 0
    last_step: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=OWN_WINDOW))
    sum_s: float = 0.0  # over the steps counted (the first left out)
    counted: int = 0
    total_s: float = 0.0  # every measured step, the first included


class Estimator:
    """Step times learned per shape key; running jobs' own step times. Not thread-safe (the
    scheduler calls it under its lock)."""

    def __init__(self) -> None:
        self.shapes: dict[str, deque[float]] = {}  # key -> recent per-job mean step times
        self.counts: dict[str, int] = {}  # key -> jobs ever folded in
        self.priors: dict[str, float] = {}  # key -> prior step time last used (for calibration)
        self.accelerators: dict[str, str] = {}  # key -> accelerator
        self.params: dict[str, int] = {}  # base model -> total_params a run reported
        self.epoch_steps: dict[str, int] = {}  # epochs key -> total steps a run reported
        self.folded: deque[str] = deque(maxlen=20_000)  # job ids already learned from
        self._folded_set: set[str] = set()
        self.runs: dict[str, _Run] = {}  # job id -> its running state (not persisted)
        self._median: dict[str, float] = {}  # key -> median of shapes[key] (cleared on learn)
        self._calib: dict[str | None, float] = {}
        self._running: dict[str, float | None] = {}  # key -> running jobs' figure (cleared on their steps)
        self.generation = 0  # bumped whenever a queued job's estimate may change (callers cache by it)

    # ------------------------------------------------------------ learning
    def learn(self, key: str, step_s: float, job_id: str | None = None) -> None:
        """Fold one job's mean step time into its shape (once per ``job_id``)."""
        if step_s <= 0 or (job_id is not None and job_id in self._folded_set):
            return
        q = self.shapes.get(key)
        if q is None:
            q = self.shapes[key] = deque(maxlen=WINDOW)
        q.append(float(step_s))
        self.counts[key] = self.counts.get(key, 0) + 1
        self._median.pop(key, None)
        self._calib.clear()
        self.generation += 1
        if job_id is not None:
            if len(self.folded) == self.folded.maxlen:
                self._folded_set.discard(self.folded[0])
            self.folded.append(job_id)
            self._folded_set.add(job_id)

    def started(self, job_id: str, key: str, total_steps: int | None, accelerator: str = "gpu",
                prior_s: float | None = None) -> None:
        """A job of shape ``key`` started running (a restart of a run keeps nothing)."""
        self.runs[job_id] = _Run(key, total_steps)
        self.accelerators.setdefault(key, accelerator)
        if prior_s:
            self.priors[key] = prior_s

    def step(self, job_id: str, step: int, step_time_s: float, total_steps: int | None = None) -> None:
        """One measured optimizer step of a running job."""
        run = self.runs.get(job_id)
        if run is None or step_time_s <= 0 or step <= run.last_step:
            return
        run.last_step = step
        run.total_s += step_time_s
        if total_steps:
            run.total_steps = total_steps
        run.steps += 1
        if run.steps == 1 and step == 1:
            return  # the first step carries compilation and warm-up
        run.recent.append(step_time_s)
        run.sum_s += step_time_s
        run.counted += 1
        if run.shape not in self.shapes:  # the shape's figure comes from its running jobs: it moved
            self._running.pop(run.shape, None)
            if run.counted >= MIN_RUNNING_STEPS:
                self.generation += 1

    def finished(self, job_id: str) -> float | None:
        """The job's run ended: fold its mean step time into its shape; that mean (or None)."""
        run = self.runs.pop(job_id, None)
        self._running.clear()
        self.generation += 1
        if run is None or not run.counted:
            return None
        mean = run.sum_s / run.counted
        self.learn(run.shape, mean, job_id)
        return mean

    def note_params(self, base_model: str, total_params: int) -> None:
        if total_params > 0 and self.params.get(base_model) != int(total_params):
            self.params[base_model] = int(total_params)
            self.generation += 1

    def note_epoch_steps(self, epochs_key: str, total_steps: int) -> None:
        if total_steps > 0 and self.epoch_steps.get(epochs_key) != int(total_steps):
            self.epoch_steps[epochs_key] = int(total_steps)
            self.generation += 1

    # ------------------------------------------------------------ estimates
    def step_time(self, key: str, prior_s: float | None = None, accelerator: str | None = None) -> Estimate | None:
        """The step time predicted for shape ``key``: learned, else the calibrated prior."""
        m = self._median.get(key)
        if m is None:
            q = self.shapes.get(key)
            if q:
                m = self._median[key] = statistics.median(q)
        if m is not None:
            return Estimate(m, "history", self.counts.get(key, 0))
        own = self._running_step_s(key)
        if own is not None:
            return Estimate(own, "running")
        if prior_s is None:
            return None
        if key not in self.priors:
            self.priors[key] = prior_s
        return Estimate(prior_s * self.calibration(accelerator or accelerator_of(key)), "prior")

    def _running_step_s(self, key: str) -> float | None:
        """The median step time of the running jobs of ``key`` that measured a few steps."""
        if not self.runs:
            return None
        if key in self._running:
            return self._running[key]
        means = [r.sum_s / r.counted for r in self.runs.values() if r.shape == key and r.counted >= MIN_RUNNING_STEPS]
        value = self._running[key] = statistics.median(means) if means else None
        return value

    def calibration(self, accelerator: str | None = None) -> float:
        """Median measured/prior over the shapes with both (on ``accelerator`` when given)."""
        c = self._calib.get(accelerator)
        if c is None:
            ratios = [self.step_time(k).step_s / self.priors[k] for k, q in self.shapes.items()  # type: ignore[union-attr]
                      if q and self.priors.get(k) and (accelerator is None or accelerator_of(k) == accelerator)]
            c = self._calib[accelerator] = statistics.median(ratios) if ratios else 1.0
        return c

    def duration(self, key: str, steps: int | None, prior_s: float | None = None,
                 accelerator: str | None = None) -> float | None:
        """Seconds a queued job of ``steps`` steps of shape ``key`` will run; None if unknown."""
        est = self.step_time(key, prior_s, accelerator)
        if est is None or not steps:
            return None
        return steps * est.step_s

    def remaining(self, job_id: str, steps_done: int | None = None, total_steps: int | None = None,
                  prior_s: float | None = None) -> float | None:
        """Seconds a running job has left: remaining steps × its own recent step time (blended
        with its shape's while it has few steps); None when its length is unknown."""
        run = self.runs.get(job_id)
        if run is None:
            return None
        total = total_steps or run.total_steps
        done = steps_done if steps_done is not None else run.last_step
        if not total:
            return None
        shape = self.step_time(run.shape, prior_s)
        if run.recent:
            own = statistics.fmean(run.recent)
            w = len(run.recent) / (len(run.recent) + OWN_WEIGHT_STEPS)
            # blended with what other jobs of the shape measured; a prior never outweighs a measurement
            step_s = own if shape is None or shape.source != "history" else w * own + (1 - w) * shape.step_s
        elif shape is not None:
            step_s = shape.step_s
        else:
            return None
        return max(0, total - done) * step_s

    # ------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "shapes": {k: list(q) for k, q in self.shapes.items()},
                "counts": self.counts, "priors": self.priors, "accelerators": self.accelerators,
                "params": self.params, "epoch_steps": self.epoch_steps, "folded": list(self.folded)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Estimator:
        est = cls()
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return est  # an unknown layout: start learning again rather than misread it
        for k, values in (data.get("shapes") or {}).items():
            est.shapes[k] = deque((float(v) for v in values if float(v) > 0), maxlen=WINDOW)
        est.counts = {k: int(v) for k, v in (data.get("counts") or {}).items()}
        est.priors = {k: float(v) for k, v in (data.get("priors") or {}).items()}
        est.accelerators = {k: str(v) for k, v in (data.get("accelerators") or {}).items()}
        est.params = {k: int(v) for k, v in (data.get("params") or {}).items()}
        est.epoch_steps = {k: int(v) for k, v in (data.get("epoch_steps") or {}).items()}
        for job_id in data.get("folded") or ():
            est.folded.append(str(job_id))
        est._folded_set = set(est.folded)
        return est


def accelerator_of(key: str) -> str | None:
    """The accelerator field of a shape key (:attr:`lorafarm.estimate.Shape.key`), None for a bare key."""
    parts = key.split("|")
    return parts[1] if len(parts) > 1 else None


def request_estimate(estimator: Estimator, key: str, steps: int | None, prior_s: float | None,
                     accelerator: str | None = None) -> float | None:
    """A queued job's ``estimated_duration`` for the policy: the one formula the scheduler and the
    simulator share (so the same snapshot gives the same decision)."""
    return estimator.duration(key, steps, prior_s, accelerator or accelerator_of(key))
