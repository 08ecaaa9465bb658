"""Each job's log lines: the last :data:`LOG_LINES` in memory (``lorafarm logs``), copied to
``<job>/log.txt`` in the store when the job's run ends."""

from __future__ import annotations

import collections
import time

from ..storage import Store, join, write_bytes

LOG_LINES = 5000


class JobLogs:
    def __init__(self) -> None:
        self._lines: dict[str, collections.deque[str]] = {}
        self._stamp: tuple[int, str] = (-1, "")  # (second, its HH:MM:SS) last formatted

    def open(self, job_id: str) -> None:
        """Start an empty log (a new job, or one recovered: earlier lines are in its log.txt)."""
        self._lines[job_id] = collections.deque(maxlen=LOG_LINES)

    def add(self, job_id: str, now: float, line: str) -> None:
        if job_id not in self._lines:
            self.open(job_id)
        second = int(now)
        if second != self._stamp[0]:  # a burst of lines shares its second's stamp
            self._stamp = (second, time.strftime('%H:%M:%S', time.localtime(now)))
        self._lines[job_id].append(f"{self._stamp[1]} {line}")

    def lines(self, job_id: str) -> list[str]:
        return list(self._lines.get(job_id, ()))

    def save(self, store: Store, tenant: str, job_id: str) -> None:
        """Copy the log to the store; best effort (the copy is a convenience)."""
        text = "\n".join(self._lines.get(job_id, ())) + "\n"
        try:
            write_bytes(join(store.job_uri(tenant, job_id), "log.txt"), text.encode())
        except Exception:  # noqa: BLE001 - the log copy is a convenience
            pass
