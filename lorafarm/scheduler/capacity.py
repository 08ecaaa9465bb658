"""The Ray capacity view: the cluster's logical CPUs and GPUs (``ray.cluster_resources()``),
less the CPUs the operator keeps back (``--reserve-cpus``, e.g. for Ray Data tasks)."""

from __future__ import annotations

from collections.abc import Sequence

import ray

from ..policy import ClusterState, RunningJob
from .seams import cluster_state


class RayCapacity:
    def __init__(self, reserve_cpus: float = 0.0):
        self.reserve_cpus = reserve_cpus

    def cluster(self, running: Sequence[RunningJob]) -> ClusterState:
        total = ray.cluster_resources()
        return cluster_state(max(0.0, total.get("CPU", 0.0) - self.reserve_cpus), total.get("GPU", 0.0), running)
