"""Job records in the store under ``<store>/_jobs/``: written only by the scheduler, read on
recovery so a restarted scheduler knows every job.

The layout is one ``<job id>.json`` per job, rewritten whole on every change. A burst of saves
(an idle cluster admitting thousands of queued jobs in one tick) would cost one temp file, fsync
and rename each — a third of a start — so saves made inside :meth:`RecordStore.batch` are
written at its end as one **batch file** ``_jobs/_batches/<ns>-<seq>.jsonl`` (one fsync for all)
when there are many. Those records get their own files later, a bounded number per tick
(:meth:`RecordStore.settle`), or sooner when they are saved again; a batch file is deleted once
every record in it has its own newer file. Every save bumps the record's ``revision``, so
recovery takes the newest copy of each job whether it is in its file or in a batch, and files
what it took from batches before deleting them.

Durability is unchanged in kind: a batch is on disk when the tick ends, before the next one. A
start that a crash leaves unrecorded is only a run the restarted scheduler does not know: runners
are owned by the scheduler and die with it, so the job is queued again, as after any restart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator

from ..storage import Store, filesystem, is_remote, join, normalize, write_bytes, write_local
from .state import JobRecord

JOBS_DIR = "_jobs"
BATCHES_DIR = "_batches"
BATCH_MIN = 32  # fewer saves than this in a batch: one file each, as outside a batch
SETTLE_PER_TICK = 500  # records filed from batch files per settle() (~40 µs each on a local disk)


class RecordStore:
    def __init__(self, store: Store):
        self.store = store
        self.root = join(store.root, JOBS_DIR)
        self.batches = join(self.root, BATCHES_DIR)
        # a local store's directory, resolved once: a save is then a temp file, fsync and rename
        # (no path resolution or filesystem lookup per record)
        self._local = None if is_remote(self.root) else normalize(self.root)
        self._pending: dict[str, JobRecord] | None = None  # inside batch(): the saves held for its end
        self._unfiled: dict[str, tuple[str, JobRecord]] = {}  # job id -> (batch file, record): no newer own file yet
        self._open: dict[str, int] = {}  # batch file -> its records still unfiled
        self._seq = 0

    # ------------------------------------------------------------ saving
    def save(self, record: JobRecord) -> None:
        """Persist ``record`` now (or, inside :meth:`batch`, at the batch's end)."""
        record.revision += 1
        if self._pending is not None:
            self._pending[record.job_id] = record
            return
        self._file(record)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the saves made inside and write them together at the end (nested: the outer one)."""
        if self._pending is not None:
            yield
            return
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if len(pending) < BATCH_MIN:
                for record in pending.values():
                    self._file(record)
            else:
                self._write_batch(list(pending.values()))

    def settle(self, budget: int = SETTLE_PER_TICK) -> int:
        """Give up to ``budget`` records that are only in batch files their own file (oldest
        batch first) and delete the batch files left with none; returns how many were filed."""
        oldest = [record for _, record in itertools.islice(self._unfiled.values(), budget)]
        for record in oldest:
            self._file(record)
        return len(oldest)

    @property
    def unfiled(self) -> int:
        """Records whose newest copy is only in a batch file."""
        return len(self._unfiled)

    def _file(self, record: JobRecord) -> None:
        data = record.model_dump_json().encode()
        if self._local is None:
            write_bytes(join(self.root, f"{record.job_id}.json"), data)
        else:
            path = os.path.join(self._local, f"{record.job_id}.json")
            try:
                write_local(path, data)
            except FileNotFoundError:  # the first record (or the directory was removed)
                os.makedirs(self._local, exist_ok=True)
                write_local(path, data)
        self._filed(record.job_id)

    def _write_batch(self, records: list[JobRecord]) -> None:
        self._seq += 1
        name = join(self.batches, f"{time.time_ns():020d}-{self._seq:06d}.jsonl")
        write_bytes(name, b"".join(r.model_dump_json().encode() + b"\n" for r in records))
        for record in records:
            self._filed(record.job_id)  # an older batch's copy is superseded by this one
            self._unfiled[record.job_id] = (name, record)
        self._open[name] = len(records)

    def _filed(self, job_id: str) -> None:
        """``job_id`` has a copy newer than any batch file's: the batch holding it may go."""
        hit = self._unfiled.pop(job_id, None)
        if hit is None:
            return
        name = hit[0]
        self._open[name] -= 1
        if not self._open[name]:
            del self._open[name]
            _remove(name)

    # ------------------------------------------------------------ recovery
    def load_all(self) -> list[JobRecord]:
        """Every job's newest record (own files and batch files); records found newer in a
        batch file are given their own file, then the batch files are deleted."""
        fs, path = filesystem(self.root)
        try:
            names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
        except FileNotFoundError:
            return []
        records: dict[str, JobRecord] = {}
        for name in sorted(names):
            with fs.open(name, "rb") as f:
                record = JobRecord.model_validate(json.loads(f.read()))
            records[record.job_id] = record
        _, batch_path = filesystem(self.batches)
        try:
            batches = sorted(n for n in fs.ls(batch_path, detail=False) if n.endswith(".jsonl"))
        except FileNotFoundError:
            batches = []
        newer: dict[str, JobRecord] = {}
        for name in batches:
            with fs.open(name, "rb") as f:
                for line in f.read().splitlines():
                    if not line.strip():
                        continue
                    record = JobRecord.model_validate(json.loads(line))
                    known = records.get(record.job_id)
                    if known is None or record.revision > known.revision:  # a tie: its own file is as new
                        records[record.job_id] = newer[record.job_id] = record
        for record in newer.values():
            self._file(record)
        for name in batches:
            fs.rm(name)
        return [records[k] for k in sorted(records)]


def _remove(uri: str) -> None:
    """Delete a batch file whose records all have newer own files (best effort: recovery
    would find each of its copies superseded anyway)."""
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.rm(path)
