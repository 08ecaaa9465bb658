"""Pure scheduling decisions: no Ray, no torch, no I/O.

The scheduler actor and ``lorafarm simulate`` call the same :func:`decide` with plain values,
so what the simulator shows at cluster scale is what the live service does.
"""

from .admit import check_admissible
from .decide import choose_victims, decide, dominant_share, rank
from .types import ClusterState, Decision, JobRequest, NodeState, Placement, RunningJob

__all__ = [
    "ClusterState", "Decision", "JobRequest", "NodeState", "Placement", "RunningJob",
    "check_admissible", "choose_victims", "decide", "dominant_share", "rank",
]
