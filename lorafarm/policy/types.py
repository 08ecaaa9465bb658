"""The policy's inputs and output: plain frozen dataclasses, cheap to build 10,000 times a
second and picklable, so the Ray scheduler and a cluster simulator pass the same values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Placement = tuple[tuple[str, int], ...]
"""Where a gang's workers go: ``((node name, workers on it), ...)``."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A queued job as the policy sees it: a gang of identical workers."""

    job_id: str
    tenant: str
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    priority: str
    submitted_at: float
    estimated_duration: float | None = None  # seconds; unused by ``decide``, for simulators' baselines
    spread: bool = False  # resources.placement: spread (one worker per node where possible)
    accelerator_type: str | None = None  # only nodes with this accelerator may hold its workers
    pack_key: str | None = None  # co-training: jobs with equal keys may share a pack; None = never packed

    share = 1.0  # of the gang it holds (a queued job holds all of its own)

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job holding resources; ``placement`` is needed only to preempt it on a per-node cluster."""

    job_id: str
    tenant: str
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    priority: str
    submitted_at: float
    started_at: float
    estimated_duration: float | None = None
    placement: Placement = ()
    accelerator_type: str | None = None
    # co-trained: the pack it runs in and its share of the pack's gang (1/members at the start).
    # ``cpus_per_worker`` and ``gpus_per_worker`` are then the share's (a pack's members add up
    # to its gang), so placements, free resources and quotas count each member by its share.
    pack: str | None = None
    share: float = 1.0
    pack_key: str | None = None  # a pack member's: queued jobs of equal key may join its pack

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node's capacity and what is free on it now (``name``: Ray's node id)."""

    name: str
    total_cpus: float
    total_gpus: float
    free_cpus: float
    free_gpus: float
    ip: str = ""
    memory_bytes: float = 0.0
    accelerator_type: str | None = None  # Ray's ``accelerator_type:<X>`` resource on the node
    custom: Mapping[str, float] = field(default_factory=dict)  # other resources (totals), e.g. a custom tag

    def shape(self) -> str:
        """The node's size in words, for messages."""
        acc = f" {self.accelerator_type}" if self.accelerator_type else ""
        return f"{self.total_cpus:g} CPUs, {self.total_gpus:g}{acc} GPUs"


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Cluster totals and free resources; with ``nodes`` every worker must fit on one node."""

    total_cpus: float
    total_gpus: float
    free_cpus: float
    free_gpus: float
    nodes: tuple[NodeState, ...] | None = None

    @classmethod
    def from_nodes(cls, nodes: Sequence[NodeState]) -> ClusterState:
        return cls(
            total_cpus=sum(n.total_cpus for n in nodes), total_gpus=sum(n.total_gpus for n in nodes),
            free_cpus=sum(n.free_cpus for n in nodes), free_gpus=sum(n.free_gpus for n in nodes),
            nodes=tuple(nodes),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now. Start ``start`` in order (each fits after the ones before it); stop
    ``preempt`` so that ``preempt_for`` can start at a later call."""

    start: tuple[str, ...] = ()
    placements: Mapping[str, Placement] = field(default_factory=dict)  # only for a per-node cluster
    preempt: tuple[str, ...] = ()
    preempt_for: str | None = None
    reserved_for: str | None = None  # the blocked head job that backfill works around
    never_fits: Mapping[str, str] = field(default_factory=dict)  # job id -> check_admissible reason
    # co-training (:mod:`.packing`): a job of ``start`` -> the queued jobs that train in its gang
    packs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # co-training: a running pack -> the queued jobs that may join it: its members checkpoint at
    # the next step boundary, and the pack starts again with them (each member resumes exactly)
    regroup: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    considered: int = 0  # queued jobs examined (the benchmark's unit of work)
