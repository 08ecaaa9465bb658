"""What the processes of one job tell each other, as frozen dataclasses.

Workers (the recipe, rank 0) → the job's driver (:mod:`lorafarm.worker.launch`) → the runner →
the scheduler and the CLI's progress bar. Every message is one of the :data:`Event` classes
below; a run of a job ends in one :class:`RunOutcome`. Objects cross Ray as they are (they
pickle); :func:`to_dict` / :func:`from_dict` are the one JSON form (``kind`` names the class),
for logs and anything that stores them.

Nothing here imports Ray or torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class RunState(StrEnum):
    """How one run of a job ended (a job's own lifecycle is :class:`~lorafarm.scheduler.state.JobState`)."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"  # checkpointed on request; the scheduler re-queues the job


@dataclass(frozen=True, slots=True)
class Phase:
    """A coarse stage of the run ("preparing data", "starting 2 worker(s)")."""

    kind: ClassVar[str] = "phase"
    phase: str


@dataclass(frozen=True, slots=True)
class DataReady:
    """The dataset is tokenized (``stats``: examples, tokens, rows, ...)."""

    kind: ClassVar[str] = "data"
    stats: dict[str, Any]
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class GroupStarted:
    """A worker group started (the first, or a restart after a failure)."""

    kind: ClassVar[str] = "attempt"
    world_size: int
    placement_group: str | None = None  # hex id, so the scheduler can remove it itself
    nodes: tuple[tuple[str, str], ...] = ()  # per rank: (Ray node id, node IP), so status shows where it runs
    pack_members: int | None = None  # co-trained: how many jobs share the gang (never which)


@dataclass(frozen=True, slots=True)
class Resumed:
    """The worker group continues from checkpoint ``step``."""

    kind: ClassVar[str] = "resumed"
    step: int
    world_size: int


@dataclass(frozen=True, slots=True)
class Step:
    """One optimizer step, as recorded in ``history.jsonl`` (schema: :mod:`lorafarm.ops.history`)."""

    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    loss: float
    lr: float
    tokens_per_s: float
    step_time_s: float
    tokens_seen: int
    eval_loss: float | None = None
    skipped: bool | None = None
    # first step only
    trainable_params: int | None = None
    total_params: int | None = None
    optimizer_state_bytes: int | None = None
    optimizer_numel: int | None = None
    # GPU only
    gpu_memory_bytes: int | None = None
    mfu: float | None = None

    def record(self) -> dict[str, Any]:
        """The ``history.jsonl`` line: the fields that are set."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    kind: ClassVar[str] = "checkpoint"
    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class WorkerError:
    """A worker failed. ``retryable``: Ray Train restarts the group from the latest checkpoint."""

    kind: ClassVar[str] = "error"
    reason: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Preempted:
    """The workers checkpointed after ``step`` and stopped, as the runner asked."""

    kind: ClassVar[str] = "preempted"
    step: int


@dataclass(frozen=True, slots=True)
class Done:
    """Rank 0 published the adapter: its manifest, and the complete step history."""

    kind: ClassVar[str] = "done"
    manifest: dict[str, Any]
    history: tuple[dict[str, Any], ...] = ()


Event = Phase | DataReady | GroupStarted | Resumed | Step | CheckpointSaved | WorkerError | Preempted | Done
EVENT_TYPES: dict[str, type] = {t.kind: t for t in (Phase, DataReady, GroupStarted, Resumed, Step, CheckpointSaved,
                                                    WorkerError, Preempted, Done)}


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run of a job ended, from the runner to the scheduler."""

    state: RunState
    reason: str | None = None
    adapter_uri: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    step: int | None = None  # PREEMPTED: the checkpoint step

    @property
    def adapter_bytes(self) -> int:
        files = (self.manifest or {}).get("files", {})
        return int(sum(f.get("size", 0) for f in files.values()))

    @classmethod
    def failed(cls, reason: str) -> RunOutcome:
        return cls(RunState.FAILED, reason=reason)


def to_dict(event: Event) -> dict[str, Any]:
    """The JSON form: the fields that are set, and ``kind``."""
    out: dict[str, Any] = {"kind": event.kind}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`to_dict`; an unknown ``kind`` or field raises ``ValueError``."""
    data = dict(data)
    kind = data.pop("kind", None)
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r} — one of {', '.join(EVENT_TYPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{kind} event: unknown field(s) {', '.join(sorted(unknown))}")
    if cls is Done and "history" in data:
        data["history"] = tuple(data["history"])
    if cls is GroupStarted and "nodes" in data:
        data["nodes"] = tuple(tuple(x) for x in data["nodes"])
    return cls(**data)
