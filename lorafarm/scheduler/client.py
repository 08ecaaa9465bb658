"""How the CLI reaches the scheduler: through Ray, by the actor's name."""

from __future__ import annotations

import os
from typing import Any

from ..errors import LorafarmError
from .names import NAMESPACE, SCHEDULER_NAME


def connect() -> None:
    """Join the current Ray cluster (``RAY_ADDRESS``, or the local one ``ray start`` made)."""
    import ray

    from ..rayio import route_ray_messages_to_stderr

    if ray.is_initialized():
        return
    route_ray_messages_to_stderr()
    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except ConnectionError as e:
        raise LorafarmError(
            f"no Ray cluster at {address} ({e}) — start one with `ray start --head`, or set RAY_ADDRESS"
        ) from None


def scheduler():
    import ray

    connect()
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        raise LorafarmError(
            "no lorafarm scheduler on this Ray cluster — start it with `lorafarm serve --store URI`"
        ) from None


def call(method: str, *args: Any, timeout: float = 60.0) -> Any:
    """Call a scheduler method and unwrap lorafarm errors raised inside the actor."""
    import ray

    handle = scheduler()
    try:
        return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if hasattr(e, "cause") else None
        if isinstance(cause, LorafarmError):
            raise cause from None
        raise LorafarmError(f"scheduler call {method} failed: {str(e).splitlines()[-1]}") from None
    except ray.exceptions.RayActorError:
        raise LorafarmError("the lorafarm scheduler died — restart it with `lorafarm serve` (jobs are recovered)") from None


def serve(store_uri: str, tenants_text: str | None, metrics_port: int | None,
          hang_timeout_s: float = 1800.0, reserve_cpus: float = 0.0) -> tuple[Any, bool]:
    """Start the detached scheduler, or find the live one. Returns (handle, created)."""
    import ray

    from .service import Scheduler

    connect()
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE), False
    except ValueError:
        pass
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Pin it to the node that runs `serve` (the head): the metrics Service selects that pod, and
    # an autoscaler scaling workers down must never take the scheduler with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = Scheduler.options(
        name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=here,
    ).remote(store_uri, tenants_text, metrics_port, hang_timeout_s, reserve_cpus)
    ray.get(handle.ping.remote(), timeout=120)
    return handle, True
