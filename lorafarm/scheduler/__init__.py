"""The multi-tenant scheduler: its core (state transitions, admission through ``policy``), the
seams it is handed (clock, launcher, capacity), and the Ray actor shell around it.

Importing this package (or :mod:`.core`) does not import Ray; :mod:`.service`, :mod:`.launcher`,
:mod:`.capacity` and :mod:`.runner` do."""

from .state import EventKind, JobEvent, JobRecord, JobState

__all__ = ["EventKind", "JobEvent", "JobRecord", "JobState"]
