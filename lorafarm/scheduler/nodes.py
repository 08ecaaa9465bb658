"""The cluster's alive nodes as the policy sees them, read from Ray's state every tick.

Each node's *free* resources are the smaller of two views: its totals less what the scheduler's
running jobs hold there (their placements: what the policy planned, then where the workers
really run, as they report it), and what Ray says is available there now. The first view
counts a job the moment it is admitted, before its placement group exists; the second catches
what the first cannot know (placement groups placed elsewhere than planned, Ray Data tasks,
jobs from an older scheduler). Nodes joining or leaving show up at the next tick.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..policy import NodeState, RunningJob

ACCELERATOR_PREFIX = "accelerator_type:"
HEAD_MARKER = "node:__internal_head__"
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def held_by_node(running: Sequence[RunningJob]) -> dict[str, tuple[float, float]]:
    """(CPUs, GPUs) the running jobs hold on each node, from their placements."""
    out: dict[str, tuple[float, float]] = {}
    for job in running:
        for node, n in job.placement:
            c, g = out.get(node, (0.0, 0.0))
            out[node] = (c + n * job.cpus_per_worker, g + n * job.gpus_per_worker)
    return out


def node_states(raw_nodes: Iterable[Mapping[str, Any]], available: Mapping[str, Mapping[str, float]],
                held: Mapping[str, tuple[float, float]], reserve_cpus: float = 0.0) -> list[NodeState]:
    """Alive nodes from ``ray.nodes()`` rows and Ray's available resources per node; the head
    node's CPUs are less ``reserve_cpus`` (kept for Ray Data tasks and the service itself)."""
    out = []
    for row in raw_nodes:
        if not row.get("Alive"):
            continue
        node_id, total = row["NodeID"], row.get("Resources") or {}
        cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
        if HEAD_MARKER in total:
            cpus = max(0.0, cpus - reserve_cpus)
        accel = next((k[len(ACCELERATOR_PREFIX):] for k in total if k.startswith(ACCELERATOR_PREFIX)), None)
        custom = {k: float(v) for k, v in total.items()
                  if k not in BUILTIN and not k.startswith(("node:", ACCELERATOR_PREFIX))}
        held_c, held_g = held.get(node_id, (0.0, 0.0))
        avail = available.get(node_id)
        free_c, free_g = cpus - held_c, gpus - held_g
        if avail is not None:
            free_c = min(free_c, float(avail.get("CPU", 0.0)))
            free_g = min(free_g, float(avail.get("GPU", 0.0)))
        out.append(NodeState(name=node_id, total_cpus=cpus, total_gpus=gpus, free_cpus=max(0.0, free_c),
                             free_gpus=max(0.0, free_g), ip=row.get("NodeManagerAddress", ""),
                             memory_bytes=float(total.get("memory", 0.0)), accelerator_type=accel, custom=custom))
    return sorted(out, key=lambda n: n.name)


def read_ray_nodes() -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """``ray.nodes()`` and Ray's available resources per node (one GCS call each)."""
    import ray
    from ray._private.state import state

    return ray.nodes(), state.available_resources_per_node()


def raylet_reachable(ip: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a node's raylet still accepts connections: a killed raylet refuses them at once,
    while Ray's own health check takes several seconds to declare the node dead."""
    try:
        with socket.create_connection((ip, port), timeout=timeout_s):
            return True
    except OSError:
        return False
