"""The Ray capacity view: every alive node's totals and free resources (see :mod:`.nodes`),
the head node's CPUs less those the operator keeps back (``--reserve-cpus``, e.g. for Ray Data
tasks), re-read on every call so that nodes joining and leaving are followed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..policy import ClusterState, RunningJob
from .nodes import held_by_node, node_states, raylet_reachable, read_ray_nodes


class RayCapacity:
    def __init__(self, reserve_cpus: float = 0.0):
        self.reserve_cpus = reserve_cpus
        self._ports: dict[str, tuple[str, int]] = {}  # node id -> (ip, raylet port), for probes

    def cluster(self, running: Sequence[RunningJob]) -> ClusterState:
        raw, available = read_ray_nodes()
        self._ports.update({r["NodeID"]: (r.get("NodeManagerAddress", ""), int(r.get("NodeManagerPort") or 0))
                            for r in raw})
        return ClusterState.from_nodes(node_states(raw, available, held_by_node(running), self.reserve_cpus))

    def unreachable(self, node_ids: Iterable[str]) -> set[str]:
        """The nodes among ``node_ids`` whose raylet is gone (Ray may not have noticed yet)."""
        out = set()
        for node_id in node_ids:
            ip, port = self._ports.get(node_id, ("", 0))
            if not port or not raylet_reachable(ip, port):
                out.add(node_id)
        return out
