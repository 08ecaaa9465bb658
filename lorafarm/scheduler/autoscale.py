"""Asking Ray's autoscaler for nodes: when the head of the queue is blocked only by capacity
(within its quota, and it fits the cluster's node shapes or could once nodes are added), the
scheduler requests its gang's bundles (``ray.autoscaler.sdk.request_resources``), and clears
the request once that job is admitted or cancelled. Off unless the cluster can grow
(``LORAFARM_AUTOSCALING=1``, set by the Helm chart's ``ray.autoscaling.enabled``)."""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "LORAFARM_AUTOSCALING"

Bundles = list[dict[str, float]]


def autoscaling_enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _ray_request(bundles: Bundles) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def gang_bundles(workers: int, cpus: float, gpus: float, accelerator: str | None = None) -> Bundles:
    """One bundle per worker, as Ray Train asks for them."""
    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {}),
              **({f"accelerator_type:{accelerator}": 0.001} if accelerator else {})}
    return [dict(bundle) for _ in range(workers)]


class AutoscaleRequests:
    """The one standing request (Ray keeps the latest call's bundles until the next call)."""

    def __init__(self, enabled: bool, request: Callable[[Bundles], None] = _ray_request):
        self.enabled = enabled
        self._request = request
        self.for_job: str | None = None

    def want(self, job_id: str, bundles: Bundles) -> bool:
        """Request ``bundles`` for ``job_id``; True when this is a new request (say so in its events)."""
        if not self.enabled or self.for_job == job_id:
            return False
        self._request(bundles)
        self.for_job = job_id
        return True

    def clear(self, job_id: str | None = None) -> None:
        """Drop the request (only if it is ``job_id``'s, when given): admitted or cancelled."""
        if self.for_job is not None and (job_id is None or job_id == self.for_job):
            self._request([])
            self.for_job = None
