"""Job records in the store under ``<store>/_jobs/``: written only by the scheduler, read on
recovery so a restarted scheduler knows every job."""

from __future__ import annotations

import json
import os

from ..storage import Store, filesystem, is_remote, join, normalize, write_bytes, write_local
from .state import JobRecord

JOBS_DIR = "_jobs"


class RecordStore:
    """One JSON file per job, rewritten whole on every change (the scheduler is the only writer)."""

    def __init__(self, store: Store):
        self.store = store
        self.root = join(store.root, JOBS_DIR)
        # a local store's directory, resolved once: a save is then a temp file, fsync and rename
        # (no path resolution or filesystem lookup per record: starts come thousands a second)
        self._local = None if is_remote(self.root) else normalize(self.root)

    def save(self, record: JobRecord) -> None:
        data = record.model_dump_json().encode()
        if self._local is None:
            write_bytes(join(self.root, f"{record.job_id}.json"), data)
            return
        path = os.path.join(self._local, f"{record.job_id}.json")
        try:
            write_local(path, data)
        except FileNotFoundError:  # the first record (or the directory was removed)
            os.makedirs(self._local, exist_ok=True)
            write_local(path, data)

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
