"""Job states and records: one ``str`` enum, typed events, one writer (the scheduler).

A record never leaves a terminal state: :meth:`JobRecord.transition` refuses it. Times come
from the caller (the scheduler's clock), never from here, so a fake clock drives every record.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from ..policy import JobRequest, RunningJob


class JobState(StrEnum):
    VALIDATING = "VALIDATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def check_state(state: str) -> JobState:
    """``state`` (any case) as a JobState; SpecError naming the valid states otherwise."""
    from ..errors import SpecError

    try:
        return JobState(state.upper())
    except ValueError:
        valid = ", ".join(s.value for s in JobState if s is not JobState.VALIDATING)
        raise SpecError([f"--state: {state!r} is not a job state — use one of {valid}"]) from None


class EventKind(StrEnum):
    SUBMITTED = "submitted"
    STATE = "state"
    STARTED = "started"
    FAILURE = "failure"
    RECOVERED = "recovered"
    CANCEL_REQUESTED = "cancel_requested"
    RESUMED = "resumed"
    PREEMPTING = "preempting"
    PREEMPTED = "preempted"
    PLACED = "placed"
    NODE_LOST = "node_lost"
    RESIZED = "resized"
    WAITING_FOR_NODES = "waiting_for_nodes"


class JobEvent(BaseModel):
    time: float
    state: JobState
    kind: EventKind
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class IllegalTransition(RuntimeError):
    pass


class JobRecord(BaseModel):
    """Everything the scheduler knows about one job; persisted as JSON in the store."""

    job_id: str
    tenant: str
    name: str
    spec: dict[str, Any]
    priority: str = "normal"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    state: JobState = JobState.QUEUED
    reason: str | None = None
    adapter_uri: str | None = None
    submitted_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    progress: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    placement_groups: list[str] = Field(default_factory=list)  # hex ids of the current run's worker groups
    last_checkpoint_step: int | None = None
    # the estimator's figures (lorafarm.estimate): at_start_s (estimated run time when the run
    # started), then estimate_s / actual_s / ratio when it ended (training time, estimate vs measured)
    estimate: dict[str, Any] = Field(default_factory=dict)
    run_workers: int | None = None  # workers of the current run when an elastic job runs smaller than ``workers``
    placement: list[tuple[str, int]] = Field(default_factory=list)  # (node id, workers there) of the current run
    worker_nodes: list[dict[str, Any]] = Field(default_factory=list)  # per rank: node_id, ip (as workers report)
    # co-training: the key of packs it may join (None: never packed; see cotrain.compat), and
    # the pack of its current or last run (its id, and how many jobs shared the gang at the start)
    pack_key: str | None = None
    pack: str | None = None
    pack_members: int | None = None
    events: list[JobEvent] = Field(default_factory=list)
    revision: int = 0  # saves so far: recovery keeps the newest copy (own file or batch file, see .records)

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def transition(self, new: JobState, now: float, kind: EventKind = EventKind.STATE, message: str = "") -> None:
        if self.state.is_terminal():
            raise IllegalTransition(f"job {self.job_id} is {self.state.value}; terminal states never change")
        self.state = new
        if new is JobState.RUNNING:
            self.started_at = now
        if new.is_terminal():
            self.ended_at = now
        self.events.append(JobEvent(time=now, state=new, kind=kind, message=message))

    def note(self, now: float, kind: EventKind, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append(JobEvent(time=now, state=self.state, kind=kind, message=message, data=data or {}))

    @property
    def min_workers(self) -> int:
        """The fewest workers it may run on (``resources.min_workers``; rigid: ``workers``)."""
        return (self.spec.get("resources") or {}).get("min_workers") or self.workers

    def request(self, estimated_duration: float | None = None) -> JobRequest:
        """The job as the policy sees it while queued (``estimated_duration``: the estimator's)."""
        r = self.spec.get("resources") or {}
        return JobRequest(job_id=self.job_id, tenant=self.tenant, workers=self.workers,
                          cpus_per_worker=self.cpus_per_worker, gpus_per_worker=self.gpus_per_worker,
                          priority=self.priority, submitted_at=self.submitted_at,
                          estimated_duration=estimated_duration,
                          spread=r.get("placement") == "spread", accelerator_type=r.get("accelerator_type"),
                          pack_key=self.pack_key)

    def running(self, now: float) -> RunningJob:
        """The job as the policy sees it while it holds resources (its current size and nodes,
        and the duration estimated when it started, so the policy knows when it should end); a
        pack member holds its share of the pack's gang (1/members at the start)."""
        k = self.pack_members if self.pack is not None and self.pack_members else 1
        return RunningJob(job_id=self.job_id, tenant=self.tenant, workers=self.run_workers or self.workers,
                          cpus_per_worker=self.cpus_per_worker / k, gpus_per_worker=self.gpus_per_worker / k,
                          priority=self.priority, submitted_at=self.submitted_at,
                          started_at=self.started_at or now, placement=tuple((n, k) for n, k in self.placement),
                          estimated_duration=(self.estimate or {}).get("at_start_s"),
                          accelerator_type=(self.spec.get("resources") or {}).get("accelerator_type"),
                          pack=self.pack if k > 1 else None, share=1.0 / k,
                          pack_key=self.pack_key if k > 1 else None)

    def summary(self) -> dict[str, Any]:
        """The ``status --json`` object."""
        return {
            "job_id": self.job_id,
            "tenant": self.tenant,
            "name": self.name,
            "state": self.state.value,
            "priority": self.priority,
            "workers": self.workers,
            "adapter_uri": self.adapter_uri,
            "reason": self.reason,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": self.progress,
            "metrics": self.metrics,
            "attempts": self.attempts,
            "last_checkpoint_step": self.last_checkpoint_step,
            "estimate": self.estimate,
            "run_workers": self.run_workers or self.workers if self.state is JobState.RUNNING else None,
            "nodes": self.worker_nodes if self.state is JobState.RUNNING else [],
            "pack_members": self.pack_members,  # co-trained: jobs sharing its gang (never which); None alone
        }
