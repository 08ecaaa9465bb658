"""The multi-tenant scheduler: a detached Ray actor, its job records and runners."""

from .state import EventKind, JobEvent, JobRecord, JobState

__all__ = ["EventKind", "JobEvent", "JobRecord", "JobState"]
