"""Retries with exponential backoff for transient object-store failures.

s3fs and botocore retry single requests quickly (see ``uri.s3_options``); this is the slower
outer layer for whole store operations (an upload and its check, a read), so that an endpoint
that is down for seconds does not fail a job. Only transient failures are retried (connection
refused/reset/closed, timeouts, HTTP 5xx, SlowDown); a missing key, a permission problem or any
other 4xx is raised at once, unchanged. ``$LORAFARM_STORAGE_RETRIES`` sets the attempts.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import LorafarmError, StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRIES_ENV = "LORAFARM_STORAGE_RETRIES"
DEFAULT_ATTEMPTS = 5
FIRST_DELAY_S = 1.0  # then 2, 4, 8, ... capped at MAX_DELAY_S
MAX_DELAY_S = 8.0
BUDGET_S = 30.0  # no backoff sleep ends later than this after the first attempt started

_TRANSIENT_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "EC2ThrottledException",
}
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EREMOTEIO,
}
_TRANSIENT_TEXT = ("SlowDown", "reduce your request rate", "ServiceUnavailable", "Service Unavailable")


def _never(e: BaseException) -> bool:
    """Errors that retrying cannot fix, some of them subclasses of connection errors."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                      FileExistsError, ssl.SSLCertVerificationError, LorafarmError)):
        return True  # LorafarmError: ours, a verdict or retries already spent
    # a TLS certificate the client rejects (botocore's SSLError is a ConnectionError)
    return "SSL" in type(e).__name__ and "certificate verify failed" in str(e).lower()


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TimeoutError, socket.timeout, ConnectionError]
    try:
        # EndpointConnectionError and ConnectTimeoutError; ReadTimeoutError and ConnectionClosedError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        types += [BotoConnectionError, HTTPClientError]
    except ImportError:  # pragma: no cover - s3fs (hence botocore) is a dependency
        pass
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError

        types += [ClientConnectionError, ClientPayloadError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _chain(exc: BaseException):
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is worth retrying: a connection or timeout problem, or
    an HTTP 5xx/throttling answer. A missing object, a permission problem or a 4xx never is."""
    from botocore.exceptions import ClientError

    transient = _transient_types()
    for e in _chain(exc):
        if _never(e):
            return False
        if isinstance(e, ClientError):
            response = getattr(e, "response", None) or {}
            code = (response.get("Error") or {}).get("Code", "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            return code in _TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(e, transient):
            return True
        if isinstance(e, OSError) and (
            e.errno in _TRANSIENT_ERRNOS or any(t in str(e) for t in _TRANSIENT_TEXT)
        ):
            return True
    return False


def attempts_from_env() -> int:
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_ATTEMPTS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise StorageError(f"{RETRIES_ENV}={raw!r} is not a positive integer — set the attempts, e.g. "
                           f"{RETRIES_ENV}={DEFAULT_ATTEMPTS}, or unset it")
    return n


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int | None = None,
    first_delay: float | None = None,
    max_delay: float | None = None,
    budget: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried on transient failures with exponential backoff (``first_delay`` doubling
    up to ``max_delay``) for at most ``attempts`` tries (``$LORAFARM_STORAGE_RETRIES``, default 5)
    while the backoff stays within ``budget`` seconds of the start. Non-transient errors are
    raised unchanged; when the retries run out, a StorageError naming ``what`` (an operation and
    its URI), the attempts and the last error."""
    attempts = attempts_from_env() if attempts is None else max(1, attempts)
    first_delay = FIRST_DELAY_S if first_delay is None else first_delay
    max_delay = MAX_DELAY_S if max_delay is None else max_delay
    budget = BUDGET_S if budget is None else budget
    start = time.monotonic()
    tried, slept = 0, 0.0
    while True:
        tried += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            delay = min(max_delay, first_delay * 2 ** (tried - 1))
            elapsed = max(time.monotonic() - start, slept)
            if tried >= attempts or elapsed + delay > budget:
                raise StorageError(
                    f"{what}: object store still failing after {tried} attempt(s) in {elapsed:.0f} s "
                    f"(last error: {_describe(e)}) — check the S3 endpoint/credentials "
                    f"(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID); the job can be resubmitted"
                ) from e
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", what, tried, attempts,
                        _describe(e), delay)
            sleep(delay)
            slept += delay
