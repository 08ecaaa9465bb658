"""The scheduler: one detached, named Ray actor per cluster (namespace ``lorafarm``).

This is the shell around :class:`~lorafarm.scheduler.core.SchedulerCore`: it hands the core
the system clock, the Ray launcher and Ray's capacity view, serves the API on a thread pool
(``max_concurrency``, so ``status`` answers while jobs train) and runs the admission loop.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import ray

from ..auth import Caller, Forbidden
from ..errors import JobNotFound, LorafarmError, SchedulerUnavailable, SpecError
from ..events import Event
from ..spec import load_tenants
from ..storage import Store, filesystem, join, read_manifest
from . import config as service_config
from .capacity import RayCapacity
from .config import check_port_free, port_message
from .core import SchedulerCore
from .launcher import RayLauncher
from .names import NAMESPACE, RUNNER_PREFIX, SCHEDULER_NAME
from .seams import SystemClock

__all__ = ["NAMESPACE", "RUNNER_PREFIX", "SCHEDULER_NAME", "Scheduler", "SchedulerCore"]

TICK_S = 0.25


@ray.remote(num_cpus=0, max_concurrency=64, max_restarts=0)
class Scheduler:
    """The API of the service (the CLI's ``call`` names these methods) and a background loop."""

    def __init__(self, store_uri: str, tenants_text: str | None = None, metrics_port: int | None = None,
                 hang_timeout_s: float | None = None, reserve_cpus: float | None = None, api_port: int | None = None):
        """Never raises: a failure to start (the store unreachable from the cluster, the metrics
        port taken, a bad value) is kept in ``self.failed`` and reported by :meth:`ping`, so the
        client says it in one line and removes this actor (an ``__init__`` that raises would come
        back as a remote traceback)."""
        self.core: SchedulerCore | None = None
        self.failed: str | None = None
        self._stop = threading.Event()
        try:
            self._start(store_uri, tenants_text, metrics_port, hang_timeout_s, reserve_cpus, api_port)
        except Exception as e:  # noqa: BLE001 - reported through ping, one line
            self.failed = _start_failure(e, store_uri)
            self.core = None  # serves nothing; the client removes it
            return
        self._loop = threading.Thread(target=self._run, name="lorafarm-admission", daemon=True)
        self._loop.start()

    def _start(self, store_uri: str, tenants_text: str | None, metrics_port: int | None,
               hang_timeout_s: float | None, reserve_cpus: float | None, api_port: int | None = None) -> None:
        store = Store.open(store_uri)
        try:
            saved = service_config.load(store)
            self.config = service_config.merge(saved, tenants_text or None, metrics_port, hang_timeout_s, reserve_cpus,
                                               api_port)
            tenants = load_tenants(self.config.tenants_text)
            if self.config.metrics_port is not None:
                check_port_free(self.config.metrics_port, "the scheduler")
            if self.config.api_port is not None:
                check_port_free(self.config.api_port, "the scheduler", "--api-port")
            self.core = SchedulerCore(
                store, tenants, SystemClock(), RayLauncher(ray.get_runtime_context().current_actor),
                RayCapacity(self.config.reserve_cpus), hang_timeout_s=self.config.hang_timeout_s,
            )
        except (LorafarmError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001 - the store is unreachable from here
            raise _StoreUnreachable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        if self.config.metrics_port is not None:
            try:
                self.core.metrics.serve(self.config.metrics_port)
            except OSError as e:
                raise LorafarmError(port_message(self.config.metrics_port, "the scheduler", e)) from None
        if self.config.api_port is not None:
            from ..rest.server import ApiServer

            try:
                ApiServer(self, self.config.api_port).start()
            except OSError as e:
                raise LorafarmError(port_message(self.config.api_port, "the scheduler", e, "--api-port")) from None
        service_config.save(store, self.config)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.core.tick()
            except Exception as e:  # noqa: BLE001 - the loop must survive any one bad tick
                print(f"lorafarm scheduler: tick failed: {type(e).__name__}: {e}", flush=True)

    def _core(self) -> SchedulerCore:
        """The core; a scheduler that failed to start (and is being removed) serves nothing."""
        if self.core is None:
            raise SchedulerUnavailable(f"the lorafarm scheduler is not running ({self.failed})")
        return self.core

    # Every API call carries the caller's key (``key``, None when it has none): it is mapped to
    # its tenant here and never kept, logged or stored (lorafarm.auth).
    def caller(self, key: str | None) -> Caller | None:
        return self._core().tenants.keyring().identify(key)

    def submit(self, spec: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        return self._core().submit(spec, caller=self.caller(key))

    def submit_checked(self, spec: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """The REST API's submit: its clients run no preflight of their own, so the one the CLI runs
        (data readable with its columns, base and targets found, a sample with labels) runs here —
        after the key, tenant and trust checks, so nobody reads data they may not name. Every
        problem at once (400), nothing queued; the capped intervals' notices come back."""
        from ..preflight import check

        core, caller = self._core(), self.caller(key)
        ran, report = check(core.checked_spec(spec, caller))
        return {**core.submit(ran.model_dump(mode="json"), caller=caller), "notices": report["notices"]}

    def status(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        return self._core().status(job_id, caller=self.caller(key))

    def list(self, tenant: str | None = None, state: str | None = None, key: str | None = None
             ) -> list[dict[str, Any]]:
        return self._core().list(tenant, state, caller=self.caller(key))

    def events(self, job_id: str, key: str | None = None) -> list[dict[str, Any]]:
        return self._core().events(job_id, caller=self.caller(key))

    def logs(self, job_id: str, offset: int = 0, key: str | None = None):
        return self._core().logs_since(job_id, offset, caller=self.caller(key))

    def cancel(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        return self._core().cancel(job_id, caller=self.caller(key))

    def tenants(self, key: str | None = None) -> list[dict[str, Any]]:
        return self._core().tenants_usage(caller=self.caller(key))

    def adapter(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        """A succeeded job's adapter: ``adapter_uri`` and its verified ``manifest``."""
        summary = self.status(job_id, key)
        if not summary.get("adapter_uri"):
            raise LorafarmError(f"job {job_id} is {summary['state']} and has no adapter — download it after it "
                                f"succeeds (`lorafarm status {job_id}`)")
        return {"adapter_uri": summary["adapter_uri"], "manifest": read_manifest(summary["adapter_uri"], verify=True)}

    def adapter_file(self, job_id: str, name: str, key: str | None = None):
        """(chunks, size, sha256) of one file the adapter's manifest lists; streamed from the store."""
        found = self.adapter(job_id, key)
        meta = found["manifest"]["files"].get(name)
        if meta is None:
            raise JobNotFound(f"{name}: not a file of job {job_id}'s adapter — see its file list "
                              f"(GET /v1/jobs/{job_id}/adapter)")
        fs, path = filesystem(join(found["adapter_uri"], name))

        def chunks():
            with fs.open(path, "rb") as f:
                while block := f.read(1 << 20):
                    yield block

        return chunks(), meta["size"], meta["sha256"]

    def whoami(self, key: str | None = None) -> dict[str, Any]:
        """Who ``key`` is (``tenant``, ``admin``), and whether keys are on (``keys``); AuthError if unknown."""
        caller = self.caller(key)
        return {"keys": caller is not None, "tenant": caller.tenant if caller else None,
                "admin": bool(caller and caller.admin)}

    def report(self, job_id: str, event: Event) -> None:
        self._core().report(job_id, event)

    def ping(self) -> dict[str, Any]:
        """``store``, ``jobs``, ``running`` and the configuration it runs with; ``error`` when it failed to start."""
        if self.core is None:
            return {"error": self.failed}
        return {**self.core.ping(), "config": self.config.public(), "tenants_text": self.config.tenants_text,
                "keys": self.core.tenants.keyring().enabled}

    def reload_tenants(self, tenants_text: str, key: str | None = None) -> dict[str, Any]:
        """Validate and swap the tenants file (a bad one raises SpecError: the old one stays).
        With keys on, only an admin key may (a tenant could otherwise raise its own quota)."""
        caller = self.caller(key)
        if caller is not None and not caller.admin:
            raise Forbidden(f"--reload-tenants: the key sent is {caller.label}'s — reloading the tenants file "
                            "needs an admin key (admin_keys in the tenants file)")
        tenants = load_tenants(tenants_text or None)
        self._core().reload_tenants(tenants)
        self.config = dataclasses.replace(self.config, tenants_text=tenants_text or None)
        service_config.save(self.core.store, self.config)
        return self.ping()


class _StoreUnreachable(Exception):
    pass


def _start_failure(e: Exception, store_uri: str) -> str:
    """The one line a failed start is reported with."""
    if isinstance(e, SpecError):
        return "; ".join(e.problems)
    if isinstance(e, _StoreUnreachable) or (isinstance(e, LorafarmError) and "object store" in str(e)):
        where = ray.util.get_node_ip_address() if ray.is_initialized() else "the cluster"
        return (f"the scheduler (on the Ray cluster, node {where}) cannot read store {store_uri}: {e} — it runs "
                "there, not in this shell, so credentials set only here do not reach it: give the cluster's nodes "
                "the store's credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL in the "
                "environment of `ray start`, or the Helm chart's env/Secret), then `lorafarm serve` again")
    if isinstance(e, LorafarmError):
        return str(e)
    first = str(e).splitlines()[0] if str(e) else ""
    return f"the scheduler failed to start: {type(e).__name__}: {first}"
