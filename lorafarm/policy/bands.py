"""Priority bands: a job's class value aged by its wait, rounded down to a class (see
:mod:`.decide`, point 1); shared by the order of service and co-training packs."""

from __future__ import annotations

import bisect

from ..spec.tenants import TenantsConfig
from .types import JobRequest, RunningJob

HOUR = 3600.0


class Bands:
    """The aging rule of one tenants file, its look-ups made once: a job's aged priority
    (:meth:`value`) and the class value it rounds down to, its band (:meth:`band`)."""

    __slots__ = ("aging", "classes", "fallback", "levels", "top")

    def __init__(self, tenants: TenantsConfig):
        self.classes = dict(tenants.priority_classes)
        self.fallback = tenants.priority_value(tenants.default_priority)
        self.aging = tenants.policy.aging_per_hour
        self.levels = sorted(set(self.classes.values()))
        self.top = self.levels[-1]

    def value(self, job: JobRequest | RunningJob, now: float) -> float:
        """Class value plus ``aging_per_hour`` points for every whole hour waited."""
        waited = now - job.submitted_at
        return self.classes.get(job.priority, self.fallback) + (self.aging * (waited // HOUR) if waited >= HOUR else 0.0)

    def band(self, value: float) -> float:
        """The class value ``value`` rounds down to."""
        return self.levels[bisect.bisect_right(self.levels, value) - 1]
