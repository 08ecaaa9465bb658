"""Node loss and elastic size: which nodes left since the last tick, and how large a job that
lost workers (or a shrunk one that may grow back) can run now.

A job's size is a whole gang in ``[resources.min_workers, resources.workers]`` whose micro
batches still divide the global batch, so every size takes the same optimizer steps (the
recipe's loss normalisation and row-seeded dropout make them equal; accumulation adapts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..policy import ClusterState, NodeState, Placement
from ..policy.pool import Pool, largest_fit
from .state import JobRecord


class NodeFollower:
    """The alive nodes seen at the last tick; tells which joined and which left since."""

    def __init__(self) -> None:
        self.alive: dict[str, NodeState] | None = None

    def update(self, nodes: Sequence[NodeState]) -> tuple[list[NodeState], list[NodeState]]:
        now = {n.name: n for n in nodes}
        before, self.alive = self.alive, now
        if before is None:
            return [], []
        return ([n for k, n in now.items() if k not in before], [n for k, n in before.items() if k not in now])


def job_nodes(record: JobRecord) -> set[str]:
    """Node ids the job's current run holds (planned placement and where its ranks report)."""
    return {n for n, _ in record.placement} | {w["node_id"] for w in record.worker_nodes if w.get("node_id")}


def allowed_sizes(record: JobRecord):
    """Whether a run on ``k`` workers keeps the job's global batch (micro batches divide it)."""
    t = record.spec.get("training") or {}
    gbs, mbs = int(t.get("global_batch_size", 1)), int(t.get("micro_batch_size", 1))
    return lambda k: gbs % (mbs * k) == 0


def fit_for(record: JobRecord, cluster: ClusterState, own: Placement = ()) -> tuple[int, Placement] | None:
    """The largest size in ``[min_workers, workers]`` the job fits now, with its placement.
    ``cluster`` counts every running job, this one included; ``own`` is this job's placement,
    given back (it is about to restart): free there becomes min(total − others, available + own)."""
    if cluster.nodes is None:
        return None
    back = dict(own)
    nodes = [replace(n, free_cpus=n.free_cpus + back.get(n.name, 0) * record.cpus_per_worker,
                     free_gpus=n.free_gpus + back.get(n.name, 0) * record.gpus_per_worker)
             for n in cluster.nodes]
    r = record.request()
    return largest_fit(Pool(ClusterState.from_nodes(nodes)), record.min_workers, record.workers,
                       record.cpus_per_worker, record.gpus_per_worker, r.spread, r.accelerator_type,
                       allowed_sizes(record))
