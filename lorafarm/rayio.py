"""Keep stdout for lorafarm's own results, and Ray's chatter out of sight unless asked for.

A Ray driver prints cluster messages (e.g. "(raylet) WARNING: N worker processes have been
started") to *stdout* from a background thread, which would break `--json` promises ("the last
stdout line is one JSON object"). We route those messages to stderr, where logs belong.

Ray's own INFO lines ("Connecting to existing Ray cluster at ...", "Started a local Ray
instance") show only with the global
``lorafarm --verbose`` (``lorafarm.cli.output.quiet_ray`` sets Ray's log levels before anything
imports Ray, and ``LORAFARM_VERBOSE=1`` when verbose).
"""

from __future__ import annotations

import os

VERBOSE_ENV = "LORAFARM_VERBOSE"

_patched = False


def verbose() -> bool:
    """Whether ``--verbose`` (or ``LORAFARM_VERBOSE=1``) asked for Ray's messages."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def route_ray_messages_to_stderr() -> None:
    """Idempotent; a no-op if Ray's internals ever change shape (messages then stay on stdout)."""
    global _patched
    if _patched:
        return
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        return

    def to_stderr(data, ignore_prefix: bool):
        return original({**data, "is_err": True}, ignore_prefix)

    worker.print_to_stdstream = to_stderr
    _patched = True
