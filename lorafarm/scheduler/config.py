"""The service's configuration, kept in the store (``<store>/_service/config.json``) so that a
plain ``lorafarm serve`` after a restart runs with what the last one was started with: the
tenants file's text, the metrics port, the hang timeout and the CPUs kept back.

Written only by the scheduler, once it started with it; no Ray here."""

from __future__ import annotations

import json
import math
import socket
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import SpecError, StorageError
from ..storage import Store, join, read_bytes, write_bytes

CONFIG_FILE = ("_service", "config.json")
DEFAULT_HANG_TIMEOUT_S = 1800.0
DEFAULT_RESERVE_CPUS = 0.0


@dataclass(frozen=True)
class ServiceConfig:
    tenants_text: str | None = None
    metrics_port: int | None = None
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S
    reserve_cpus: float = DEFAULT_RESERVE_CPUS
    api_port: int | None = None  # the tenant REST API (lorafarm.rest), served by the scheduler

    def problems(self) -> list[str]:
        """Values that would make every job fail (the CLI checks its flags; this guards the actor)."""
        out = []
        if not (isinstance(self.hang_timeout_s, int | float) and math.isfinite(self.hang_timeout_s)
                and self.hang_timeout_s > 0):
            out.append(f"--hang-timeout: {self.hang_timeout_s!r} must be a finite number of seconds > 0")
        if not (isinstance(self.reserve_cpus, int | float) and math.isfinite(self.reserve_cpus)
                and self.reserve_cpus >= 0):
            out.append(f"--reserve-cpus: {self.reserve_cpus!r} must be a finite number >= 0")
        if self.metrics_port is not None and not (isinstance(self.metrics_port, int)
                                                  and 1 <= self.metrics_port <= 65535):
            out.append(f"--metrics-port: {self.metrics_port!r} must be a port number in 1-65535")
        if self.api_port is not None and not (isinstance(self.api_port, int) and 1 <= self.api_port <= 65535):
            out.append(f"--api-port: {self.api_port!r} must be a port number in 1-65535")
        if self.api_port is not None and self.api_port == self.metrics_port:
            out.append(f"--api-port: {self.api_port} is also --metrics-port — give them different ports")
        return out

    def public(self) -> dict[str, Any]:
        """What ``ping`` reports (the tenants text is summarised by its presence)."""
        d = asdict(self)
        d["tenants"] = self.tenants_text is not None
        return d


def config_uri(store: Store) -> str:
    return join(store.root, *CONFIG_FILE)


def load(store: Store) -> ServiceConfig | None:
    """The saved configuration, or None (first start, or an unreadable file: defaults then)."""
    try:
        raw = json.loads(read_bytes(config_uri(store)))
    except StorageError:  # not saved yet (an unreachable store fails the scheduler's recovery instead)
        return None
    except (ValueError, OSError):
        return None
    known = {k: raw[k] for k in ("tenants_text", "metrics_port", "hang_timeout_s", "reserve_cpus", "api_port")
             if k in raw}
    try:
        cfg = ServiceConfig(**known)
    except TypeError:
        return None
    return None if cfg.problems() else cfg


def merge(saved: ServiceConfig | None, tenants_text: str | None = None, metrics_port: int | None = None,
          hang_timeout_s: float | None = None, reserve_cpus: float | None = None,
          api_port: int | None = None) -> ServiceConfig:
    """What was given (not None) over what was saved over the defaults; raises SpecError for a bad value."""
    given = {k: v for k, v in {"tenants_text": tenants_text, "metrics_port": metrics_port,
                               "hang_timeout_s": hang_timeout_s, "reserve_cpus": reserve_cpus,
                               "api_port": api_port}.items()
             if v is not None}
    cfg = replace(saved or ServiceConfig(), **given)
    if problems := cfg.problems():
        raise SpecError(problems)
    return cfg


def save(store: Store, cfg: ServiceConfig) -> None:
    write_bytes(config_uri(store), json.dumps(asdict(cfg), indent=1).encode())


def port_message(port: int, who: str, e: OSError, flag: str = "--metrics-port") -> str:
    return (f"{flag} {port}: {who} cannot listen on it ({e.strerror or e}) — another process holds it; "
            f"choose a free port with `lorafarm serve {flag} N`")


def check_port_free(port: int, who: str, flag: str = "--metrics-port") -> None:
    """Raise a one-line LorafarmError when ``port`` cannot be bound on this node."""
    from ..errors import LorafarmError

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            raise LorafarmError(port_message(port, who, e, flag)) from None
