"""Job records in the store under ``<store>/_jobs/``: written only by the scheduler, read on
recovery so a restarted scheduler knows every job."""

from __future__ import annotations

import json

from ..storage import Store, filesystem, join, write_bytes
from .state import JobRecord

JOBS_DIR = "_jobs"


class RecordStore:
    """One JSON file per job, rewritten whole on every change (the scheduler is the only writer)."""

    def __init__(self, store: Store):
        self.store = store
        self.root = join(store.root, JOBS_DIR)

    def save(self, record: JobRecord) -> None:
        write_bytes(join(self.root, f"{record.job_id}.json"), record.model_dump_json().encode())

    def load_all(self) -> list[JobRecord]:
        fs, path = filesystem(self.root)
        try:
            names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            with fs.open(name, "rb") as f:
                out.append(JobRecord.model_validate(json.loads(f.read())))
        return out
