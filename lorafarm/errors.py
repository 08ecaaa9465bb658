"""A small, picklable exception hierarchy: the CLI maps each kind to an exit code.

Every error carries a message written for the user (what is wrong — how to fix); no
traceback is needed to act on it.
"""

from __future__ import annotations


class LorafarmError(Exception):
    """Base of every error lorafarm raises on purpose."""

    exit_code = 1


class SpecError(LorafarmError):
    """The job spec (or a CLI usage) is wrong; ``problems`` lists every problem, one line each."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.problems,))


class PreflightError(SpecError):
    """The spec is well-formed but cannot run (dataset missing, target module absent, ...)."""


class StorageError(LorafarmError):
    """Object storage is unreachable, or an object is missing or corrupt."""


class DataError(LorafarmError):
    """A dataset row is unusable; the message names file, row and problem."""


class ModelError(LorafarmError):
    """The base model cannot be found or loaded (never downloaded at run time)."""


class AdapterError(LorafarmError):
    """An adapter failed verification, or is incomplete/missing in the store."""


class TrainingError(LorafarmError):
    """Training cannot go on (a non-finite loss, a checkpoint made for another spec); retrying
    the same step would fail the same way."""


class JobFailed(LorafarmError):
    """A training job ended without publishing an adapter; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class JobNotFound(LorafarmError):
    """No such job — or another tenant's, which a tenant's key cannot tell apart (HTTP 404)."""


class SchedulerUnavailable(LorafarmError):
    """The cluster's scheduler is not running (not started yet, or restarting): a follower may wait for it."""
