"""The tokenized cache on the store: many bounded Parquet files plus a small index per split.

``<entry>/train/index.json`` lists the part files in row order (name, row count), the rows per
Parquet row group (what a worker fetches at a time) and the longest row; ``n_labels.npy`` holds
the label tokens of every row (4 bytes a row), which is all a worker needs to weigh a global
batch without reading it. Row ``i`` of the split is row ``i - start(part)`` of its part file.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..storage import join, read_bytes, write_bytes
from .read import _reason

ROW_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("position_ids", pa.list_(pa.int32())),
    ("seq_lens", pa.list_(pa.int32())),
    ("n_labels", pa.int32()),
])
ROW_GROUP_ROWS = 64  # rows per Parquet row group in the cache: a worker reads one group to get one row
INDEX, N_LABELS = "index.json", "n_labels.npy"


@dataclass(frozen=True)
class CacheIndex:
    """One split of the cache: ``files`` (name, rows) in row order under ``uri``."""

    uri: str
    files: list[tuple[str, int]]
    row_group_rows: int
    max_len: int
    n_labels: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(len(self.n_labels))

    @property
    def starts(self) -> np.ndarray:
        """The first row of each file (and the total at the end)."""
        return np.concatenate([[0], np.cumsum([n for _, n in self.files], dtype=np.int64)])


def corrupt(uri: str, entry: str, e: BaseException) -> DataError:
    return DataError(f"{uri}: the cached tokenized rows are corrupt ({_reason(e)}) — delete {entry} (the cache "
                     "entry) and resubmit: the data is then tokenized again")


def part_name(uid: int) -> str:
    return f"part-{uid:05d}.parquet"


def write_part(split_uri: str, uid: int, rows: list[dict[str, Any]]) -> str:
    """Write one unit's rows as ``part-<uid>.parquet``; its name."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), buf, row_group_size=ROW_GROUP_ROWS)
    name = part_name(uid)
    write_bytes(join(split_uri, name), buf.getvalue())
    return name


def write_index(split_uri: str, files: list[tuple[str, int]], n_labels: np.ndarray, max_len: int) -> None:
    buf = io.BytesIO()
    np.save(buf, n_labels.astype(np.int32), allow_pickle=False)
    write_bytes(join(split_uri, N_LABELS), buf.getvalue())
    write_bytes(join(split_uri, INDEX), json.dumps({
        "files": [{"name": n, "rows": r} for n, r in files], "rows": int(len(n_labels)),
        "row_group_rows": ROW_GROUP_ROWS, "max_len": int(max_len)}, sort_keys=True).encode())


def read_index(split_uri: str) -> CacheIndex:
    """The index of a cached split; a damaged one is a :class:`DataError` naming the entry to delete
    (a store that cannot be reached raises a StorageError, after retries)."""
    entry = split_uri.rstrip("/").rsplit("/", 1)[0]
    raw = read_bytes(join(split_uri, INDEX))
    try:
        meta = json.loads(raw)
        n_labels = np.load(io.BytesIO(read_bytes(join(split_uri, N_LABELS))), allow_pickle=False)
        files = [(f["name"], int(f["rows"])) for f in meta["files"]]
        if sum(n for _, n in files) != len(n_labels) or meta["rows"] != len(n_labels):
            raise ValueError(f"the index counts {meta['rows']} rows, its files {sum(n for _, n in files)}, "
                             f"its labels {len(n_labels)}")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - json, numpy and KeyError alike: the entry is damaged
        raise corrupt(join(split_uri, INDEX), entry, e) from None
    return CacheIndex(split_uri, files, int(meta["row_group_rows"]), int(meta["max_len"]), n_labels)


def read_part(index: CacheIndex, i: int) -> pa.Table:
    """Part file ``i`` whole (for tests and small splits; workers fetch row groups: :mod:`rows`)."""
    uri = join(index.uri, index.files[i][0])
    data = read_bytes(uri)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
        raise corrupt(uri, index.uri.rstrip("/").rsplit("/", 1)[0], e) from None
    if table.num_rows != index.files[i][1]:
        raise corrupt(uri, index.uri.rstrip("/").rsplit("/", 1)[0],
                      ValueError(f"{table.num_rows} rows, the index says {index.files[i][1]}"))
    return table


def load_rows(split_uri: str) -> pa.Table:
    """Every row of a cached split in one table: for tests, benchmarks and small splits only
    (training reads rows as it needs them: :class:`lorafarm.data.rows.RowSource`)."""
    index = read_index(split_uri)
    tables = [read_part(index, i) for i in range(len(index.files))]
    return pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()
