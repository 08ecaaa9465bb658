"""A worker's rows: fetched from the cache by part file and row group, as the steps need them.

A worker never holds the whole tokenized split: :class:`RowSource` keeps the index (label tokens
per row, 4 bytes a row) and a cache of decoded row groups bounded in bytes
(``LORAFARM_ROW_CACHE_BYTES``, default 256 MiB), least recently used first out. ``prefetch`` reads
the next step's row groups on a background thread, so reading overlaps the current step's compute.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import filesystem, join
from .cache_index import CacheIndex, corrupt, read_index

DEFAULT_CACHE_BYTES = 256 << 20
OPEN_FILES = 16  # part files kept open (their footers parsed) at once


def cache_budget() -> int:
    """Bytes of decoded rows one worker may cache (``LORAFARM_ROW_CACHE_BYTES``)."""
    raw = os.environ.get("LORAFARM_ROW_CACHE_BYTES", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_CACHE_BYTES


class RowSource:
    """Random access to the rows of one cached split, reading only the row groups asked for."""

    def __init__(self, split_uri: str, cache_bytes: int | None = None):
        self.index: CacheIndex = read_index(split_uri)
        self.uri = split_uri
        self.budget = cache_budget() if cache_bytes is None else cache_bytes
        self.n_labels = self.index.n_labels
        self.max_len = self.index.max_len
        self._starts = self.index.starts
        self._groups: collections.OrderedDict[tuple[int, int], pa.Table] = collections.OrderedDict()
        self._files: collections.OrderedDict[int, tuple[Any, pq.ParquetFile]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafarm-prefetch")
        self._pending: Future | None = None
        self.cached_bytes = 0
        self.peak_cached_bytes = 0
        self.groups_read = 0

    def __len__(self) -> int:
        return self.index.num_rows

    def _locate(self, i: int) -> tuple[int, int, int]:
        """(part file, row group, row in the group) of row ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        part = int(np.searchsorted(self._starts, i, side="right")) - 1
        local = i - int(self._starts[part])
        g, r = divmod(local, self.index.row_group_rows)
        return part, g, r

    def _file(self, part: int) -> pq.ParquetFile:
        if part in self._files:
            self._files.move_to_end(part)
            return self._files[part][1]
        uri = join(self.uri, self.index.files[part][0])
        fs, path = filesystem(uri)
        fh = fs.open(path, "rb")
        try:
            pf = pq.ParquetFile(fh)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            fh.close()
            raise corrupt(uri, self.uri.rstrip("/").rsplit("/", 1)[0], e) from None
        self._files[part] = (fh, pf)
        while len(self._files) > OPEN_FILES:
            old, _ = self._files.popitem(last=False)[1]
            old.close()
        return pf

    def _group(self, part: int, g: int) -> pa.Table:
        """Row group ``g`` of part ``part``, from the cache or the store (caller holds the lock)."""
        key = (part, g)
        table = self._groups.get(key)
        if table is not None:
            self._groups.move_to_end(key)
            return table
        pf = self._file(part)
        try:
            table = pf.read_row_group(g)
        except Exception as e:  # noqa: BLE001
            if e.__class__.__name__ == "StorageError":
                raise
            uri = join(self.uri, self.index.files[part][0])
            raise corrupt(uri, self.uri.rstrip("/").rsplit("/", 1)[0], e) from None
        self.groups_read += 1
        self._groups[key] = table
        self.cached_bytes += table.nbytes
        while self.cached_bytes > self.budget and len(self._groups) > 1:
            _, evicted = self._groups.popitem(last=False)
            self.cached_bytes -= evicted.nbytes
        self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
        return table

    def take(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The rows at ``indices`` (as dicts, in that order)."""
        out = []
        with self._lock:
            for i in indices:
                part, g, r = self._locate(int(i))
                out.append(self._group(part, g).slice(r, 1).to_pylist()[0])
        return out

    def prefetch(self, indices: Sequence[int]) -> None:
        """Read the row groups of ``indices`` in the background (at most one prefetch at a time;
        its rows stay in the cache only while the budget allows)."""
        if self._pending is not None and not self._pending.done():
            return
        wanted = sorted({self._locate(int(i))[:2] for i in indices})

        def load() -> None:
            for part, g in wanted:
                with self._lock:
                    self._group(part, g)

        self._pending = self._pool.submit(load)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()
        self._groups.clear()
        self.cached_bytes = 0
