"""Free resources as the policy hands them out within one ``decide`` call.

A gang fits when every worker fits on one node (or, without node data, when the totals
suffice). Workers of one gang are identical, so counting how many fit on each node and
adding up is exact; placement then fills the fullest nodes first (best fit) to keep
large holes for large gangs.
"""

from __future__ import annotations

import math

from .types import ClusterState, JobRequest, Placement

EPS = 1e-9  # resources are floats (fractional GPUs); compare with a little slack


def per_node(free_cpus: float, free_gpus: float, cpus: float, gpus: float) -> float:
    """How many workers of (cpus, gpus) fit in (free_cpus, free_gpus); inf for a zero-size worker."""
    k = math.inf
    if cpus > 0:
        k = (free_cpus + EPS) // cpus
    if gpus > 0:
        k = min(k, (free_gpus + EPS) // gpus)
    return k


class Pool:
    """Mutable free resources: aggregate, and per node when the cluster gave nodes."""

    __slots__ = ("cpus", "gpus", "names", "index", "node_cpus", "node_gpus", "cap_cpus", "cap_gpus", "accel",
                 "failed")

    def __init__(self, cluster: ClusterState):
        self.cpus = cluster.free_cpus
        self.gpus = cluster.free_gpus
        nodes = cluster.nodes
        self.names = None if nodes is None else [n.name for n in nodes]
        self.index = {n.name: i for i, n in enumerate(nodes or ())}
        self.node_cpus = [n.free_cpus for n in nodes or ()]
        self.node_gpus = [n.free_gpus for n in nodes or ()]
        self.cap_cpus = [n.total_cpus for n in nodes or ()]
        self.cap_gpus = [n.total_gpus for n in nodes or ()]
        self.accel = [n.accelerator_type for n in nodes or ()]
        self.failed: set[tuple] = set()  # shapes that did not fit (free only shrinks)

    def counts(self, cpus: float, gpus: float, accelerator: str | None = None, idle: bool = False) -> list[float]:
        """How many such workers each node holds now (``idle``: when empty); 0 on nodes without
        the accelerator the job asks for."""
        free_c, free_g = (self.cap_cpus, self.cap_gpus) if idle else (self.node_cpus, self.node_gpus)
        return [per_node(c, g, cpus, gpus) if accelerator is None or a == accelerator else 0
                for c, g, a in zip(free_c, free_g, self.accel, strict=True)]

    def place(self, workers: int, cpus: float, gpus: float, spread: bool = False,
              accelerator: str | None = None) -> Placement | None:
        """Where the gang would go (``()`` without node data), or None if it does not fit now.

        ``pack`` fills the fullest nodes first (fewest nodes, large holes kept for large gangs);
        ``spread`` deals workers one at a time to the emptiest nodes that still hold one."""
        shape = (workers, cpus, gpus, spread, accelerator)
        if shape in self.failed:
            return None  # it did not fit before, and nothing has been given back since
        if workers * cpus > self.cpus + EPS or workers * gpus > self.gpus + EPS:
            self.failed.add(shape)
            return None
        if self.names is None:
            return ()
        counts = self.counts(cpus, gpus, accelerator)
        if sum(min(k, workers) for k in counts) < workers:
            self.failed.add(shape)
            return None
        if spread:
            given = [0] * len(counts)
            for _ in range(workers):  # the node with the most room left for one more worker
                i = max((i for i, k in enumerate(counts) if k - given[i] >= 1),
                        key=lambda i: (counts[i] - given[i] > 0, -given[i], self.node_cpus[i], self.node_gpus[i], -i))
                given[i] += 1
            return tuple((self.names[i], n) for i, n in enumerate(given) if n)
        order = sorted((i for i, k in enumerate(counts) if k >= 1),
                       key=lambda i: (self.node_gpus[i], self.node_cpus[i]))
        out, left = [], workers
        for i in order:
            n = int(min(counts[i], left))
            out.append((self.names[i], n))
            left -= n
            if not left:
                break
        return tuple(out)

    def place_job(self, job: JobRequest) -> Placement | None:
        """:meth:`place` for a queued job, with its placement and accelerator."""
        return self.place(job.workers, job.cpus_per_worker, job.gpus_per_worker, job.spread, job.accelerator_type)

    def take(self, workers: int, cpus: float, gpus: float, placement: Placement, sign: float = 1.0) -> None:
        """Allocate a placed gang (``sign=-1`` gives it back)."""
        if sign < 0:
            self.failed.clear()
        self.cpus -= sign * workers * cpus
        self.gpus -= sign * workers * gpus
        if self.names is not None and placement:
            for name, n in placement:
                i = self.index[name]
                self.node_cpus[i] -= sign * n * cpus
                self.node_gpus[i] -= sign * n * gpus

    def copy(self) -> Pool:
        other = Pool.__new__(Pool)
        for name in ("cpus", "gpus", "names", "index", "cap_cpus", "cap_gpus", "accel"):
            setattr(other, name, getattr(self, name))
        other.node_cpus, other.node_gpus = list(self.node_cpus), list(self.node_gpus)
        other.failed = set()
        return other

    def clip(self, free: Pool) -> None:
        """Never more than ``free`` holds (this pool is ``free`` less a reservation)."""
        self.cpus, self.gpus = min(self.cpus, free.cpus), min(self.gpus, free.gpus)
        self.node_cpus = [min(a, b) for a, b in zip(self.node_cpus, free.node_cpus, strict=True)]
        self.node_gpus = [min(a, b) for a, b in zip(self.node_gpus, free.node_gpus, strict=True)]

    def reserve(self, workers: int, cpus: float, gpus: float, accelerator: str | None = None) -> None:
        """Hold back, on every node, what a blocked gang could ever use there.

        On each node the gang could hold at most ``m`` workers even when the node is empty;
        we withhold ``min(free, m × per-worker need)`` of each resource. What is left is
        resources the gang can never use there, so jobs placed in it cannot delay it.
        """
        self.cpus -= min(self.cpus, workers * cpus)
        self.gpus -= min(self.gpus, workers * gpus)
        if self.names is None:
            return
        for i, cap in enumerate(self.counts(cpus, gpus, accelerator, idle=True)):
            m = min(workers, cap)
            self.node_cpus[i] -= min(self.node_cpus[i], m * cpus)
            self.node_gpus[i] -= min(self.node_gpus[i], m * gpus)
        # what is left in total is at most what is left on the nodes together
        self.cpus = min(self.cpus, sum(self.node_cpus))
        self.gpus = min(self.gpus, sum(self.node_gpus))



def largest_fit(pool: Pool, low: int, high: int, cpus: float, gpus: float, spread: bool = False,
                accelerator: str | None = None, allowed=lambda _k: True) -> tuple[int, Placement] | None:
    """The largest gang size in ``[low, high]`` that fits now (and that ``allowed``), with its
    placement: how far an elastic job shrinks after a node loss, or grows back."""
    for k in range(high, low - 1, -1):
        if not allowed(k):
            continue
        placement = pool.place(k, cpus, gpus, spread, accelerator)
        if placement is not None:
            return k, placement
    return None
