"""Pure scheduling decisions: no Ray, no torch, no I/O.

``lorafarm simulate`` calls :func:`decide` with plain values; the scheduler keeps its queue in a
:class:`~lorafarm.policy.queue.QueueIndex`, which makes exactly ``decide``'s decision without
ranking the whole queue on every tick, so what the simulator shows at cluster scale is what the
live service does; both admit submissions with :func:`submission_problems` and count quotas with
:mod:`.quota`.
"""

from .admit import check_admissible
from .decide import choose_victims, decide, dominant_share, rank
from .quota import Usage, usage_by_tenant, within_quota
from .submission import job_priority, submission_problems
from .types import ClusterState, Decision, JobRequest, NodeState, Placement, RunningJob

__all__ = [
    "ClusterState", "Decision", "JobRequest", "NodeState", "Placement", "RunningJob", "Usage",
    "check_admissible", "choose_victims", "decide", "dominant_share", "job_priority", "rank", "submission_problems",
    "usage_by_tenant", "within_quota",
]
