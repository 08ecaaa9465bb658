"""How the CLI reaches the scheduler: through Ray, by the actor's name."""

from __future__ import annotations

import os
from typing import Any

from ..errors import LorafarmError, SchedulerUnavailable
from .names import NAMESPACE, SCHEDULER_NAME

NO_SCHEDULER = "no lorafarm scheduler on this Ray cluster — start it with `lorafarm serve --store URI`"
SCHEDULER_DIED = "the lorafarm scheduler died — restart it with `lorafarm serve` (jobs are recovered)"


def connect() -> None:
    """Join the current Ray cluster (``RAY_ADDRESS``, or the local one ``ray start`` made)."""
    import ray

    from ..rayio import route_ray_messages_to_stderr, verbose

    if ray.is_initialized():
        return
    route_ray_messages_to_stderr()
    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=verbose())
    except ray.exceptions.AuthenticationError as e:
        raise LorafarmError(auth_message(address, str(e).split(". ")[0])) from None
    except ConnectionError as e:
        if refused_token(address):
            raise LorafarmError(auth_message(address)) from None
        raise LorafarmError(
            f"no Ray cluster at {address} ({e}) — start one with `ray start --head`, or set RAY_ADDRESS"
        ) from None


def auth_message(address: str, detail: str = "") -> str:
    return (f"the Ray cluster at {address} refused this client's token{f' ({detail})' if detail else ''} — "
            "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file named by "
            "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)")


def refused_token(address: str) -> bool:
    """Whether the GCS at ``address`` answers but rejects this client as unauthenticated."""
    if address in ("auto", "local") or "://" in address:
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address(address) or address
        except Exception:  # noqa: BLE001 - cannot resolve: not an auth question
            return False
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            try:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=5)
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAUTHENTICATED
    except Exception:  # noqa: BLE001 - a probe only
        return False
    return False


API_ENV = "LORAFARM_API"
_api_flag: str | None = None


def set_api(url: str | None) -> None:
    """``--api URL``: talk to the scheduler's REST API (``lorafarm serve --api-port``), not Ray."""
    global _api_flag
    _api_flag = url.rstrip("/") if url else None


def api_url() -> str | None:
    return _api_flag or (os.environ.get(API_ENV) or "").strip().rstrip("/") or None


def scheduler():
    import ray

    connect()
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        raise SchedulerUnavailable(NO_SCHEDULER) from None


REST_METHODS = frozenset({"submit", "status", "list", "events", "logs", "cancel", "tenants"})
KEYED = frozenset({"submit", "status", "list", "events", "logs", "cancel", "tenants", "whoami", "reload_tenants"})


def call(method: str, *args: Any, timeout: float = 60.0) -> Any:
    """Call a scheduler method and unwrap lorafarm errors raised inside the actor.
    :class:`SchedulerUnavailable` when there is none, or it died during the call. The caller's
    API key (``--key-file`` or ``LORAFARM_API_KEY``) goes with every call that acts for a
    tenant; with ``--api``/``LORAFARM_API`` the call goes to the REST API instead of Ray."""
    from ..auth import client_key

    if (base := api_url()) is not None and method in REST_METHODS:
        from ..rest.client import RestClient

        return RestClient(base, client_key()).call(method, *args, timeout=timeout)
    import ray

    handle = scheduler()
    kwargs = {"key": client_key()} if method in KEYED else {}
    try:
        return ray.get(getattr(handle, method).remote(*args, **kwargs), timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if hasattr(e, "cause") else None
        if isinstance(cause, LorafarmError):
            raise cause from None
        raise LorafarmError(f"scheduler call {method} failed: {str(e).splitlines()[-1]}") from None
    except ray.exceptions.RayActorError:
        raise SchedulerUnavailable(SCHEDULER_DIED) from None
    except ray.exceptions.GetTimeoutError:
        raise SchedulerUnavailable(f"the lorafarm scheduler did not answer `{method}` within {timeout:.0f} s "
                                   "— it may be restarting; try again, or check it with `lorafarm tenants`") from None


def serve(store_uri: str, tenants_text: str | None, metrics_port: int | None,
          hang_timeout_s: float | None = None, reserve_cpus: float | None = None,
          api_port: int | None = None) -> tuple[Any, bool]:
    """Start the detached scheduler, or find the live one. Returns (handle, created). Values
    left None come from the configuration the store keeps (``<store>/_service/config.json``),
    else the defaults. A scheduler that fails to start is removed and its reason raised."""
    import ray

    from .config import check_port_free
    from .service import Scheduler

    connect()
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE), False
    except ValueError:
        pass
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if metrics_port is not None:  # the scheduler runs on this node: check before it starts
        check_port_free(metrics_port, "this node")
    if api_port is not None:
        check_port_free(api_port, "this node", "--api-port")
    # Pin it to the node that runs `serve` (the head): the metrics Service selects that pod, and
    # an autoscaler scaling workers down must never take the scheduler with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = Scheduler.options(
        name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=here,
    ).remote(store_uri, tenants_text, metrics_port, hang_timeout_s, reserve_cpus, api_port)
    try:
        pong = ray.get(handle.ping.remote(), timeout=120)
    except ray.exceptions.RayActorError as e:
        ray.kill(handle, no_restart=True)
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise LorafarmError(f"the scheduler failed to start: {first}") from None
    if pong.get("error"):
        ray.kill(handle, no_restart=True)
        raise LorafarmError(pong["error"] + _credentials_hint(store_uri, pong["error"]))
    return handle, True


def _credentials_hint(store_uri: str, error: str) -> str:
    if store_uri.startswith("s3://") and os.environ.get("AWS_ACCESS_KEY_ID") and "cannot read store" in error:
        return " (this shell has AWS_ACCESS_KEY_ID; the cluster's nodes do not see it)"
    return ""
