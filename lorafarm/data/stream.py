"""Tokenize a dataset in units of work, in Ray Data tasks over the cluster's CPUs or in process.

A *unit* is a byte range of a JSONL file, a run of row groups of a Parquet file, or a whole
JSON file. Units are cut from the data alone (file sizes and footers, never the CPU count), and
each one reads its rows straight from the URI, checks, encodes, masks and packs them, and
writes its rows as one bounded Parquet part file of the cache. The driver receives only a
small summary per unit (row counts, label tokens per row, the counters of the stats), so its
memory does not grow with the dataset, and the cache holds the same rows in the same order
however many tasks ran: rows are ordered by unit, and a unit by its lines.

Line numbers: a task reading a range deep in a big file does not know how many lines came
before it, so it names rows with a reference (:func:`line_ref`) that the driver resolves once
every earlier unit has reported its line count.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError, StorageError
from ..spec import JobSpec
from ..storage import join
from .cache_index import part_name, write_part
from .formats import encode
from .labels import LabelReport
from .packing import to_rows
from .read import BadRowReport, checked_examples, file_size, list_files, parquet_groups, unit_rows

UNIT_BYTES = 1 << 20  # a JSONL file is read in ranges of this many bytes, one task each (~1-5k chat rows)
UNIT_ROWS = 16_384  # a Parquet file in runs of whole row groups of about this many rows
# measured on a 2-core VM (bench/data_bench.py): Ray Data's first task result arrives ~15 s after
# the dataset starts, and a unit then takes ~1.5x its in-process time per task (worker start-up,
# pickling, the store's file system opened again per task)
RAY_START_S = 15.0
RAY_TASK_COST = 1.5
_REF = re.compile("\x1f(\\d+)\x1f")


@dataclass(frozen=True)
class Unit:
    """One task's share of the data: ``kind`` lines (bytes ``[start, end)``), groups (row groups
    ``[start, end)``) or whole (the file)."""

    uid: int
    split: str  # "train": dataset.uri (eval rows held out by eval_fraction); "eval": dataset.eval_uri
    file_idx: int
    file: str
    kind: str
    start: int
    end: int
    size: int  # bytes, for progress


def plan_units(uri: str, split: str, first_uid: int = 0, unit_bytes: int | None = None) -> list[Unit]:
    """The units of the files ``uri`` names, in row order (file sizes and Parquet footers only)."""
    step = unit_bytes or UNIT_BYTES
    units: list[Unit] = []
    for file_idx, f in enumerate(list_files(uri)):
        size = file_size(f)
        if f.endswith(".jsonl"):
            for start in range(0, max(size, 1), step):
                units.append(Unit(first_uid + len(units), split, file_idx, f, "lines", start,
                                  min(start + step, size), min(step, size - start)))
            continue
        groups = parquet_groups(f) if f.endswith(".parquet") else None
        if not groups:  # JSON, or a footer that does not read (its unit names the problem)
            units.append(Unit(first_uid + len(units), split, file_idx, f, "whole", 0, 0, size))
            continue
        g, total = 0, sum(groups) or 1
        while g < len(groups):
            end, rows = g, 0
            while end < len(groups) and (rows == 0 or rows + groups[end] <= UNIT_ROWS):
                rows += groups[end]
                end += 1
            units.append(Unit(first_uid + len(units), split, file_idx, f, "groups", g, end, size * rows // total))
            g = end
    return units


def line_ref(n: int) -> str:
    """A line counted from the start of a unit's range, as the driver will resolve it."""
    return f"\x1f{n}\x1f"


def resolve(text: str, base: int) -> str:
    """``text`` with every :func:`line_ref` turned into a line number of the file."""
    return _REF.sub(lambda m: str(base + int(m.group(1))), text) if "\x1f" in text else text


def held_out(seed: int, file_idx: int, key: int, fraction: float) -> bool:
    """Whether the row at ``key`` (a JSONL line's byte offset, a row's index) of file ``file_idx``
    is in the eval split: a hash of the row's id and the seed, so no pass over the data first."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{file_idx}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0**64


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode_one(example: dict[str, Any], fmt: str, tokenizer_dir: str, seq_len: int) -> dict[str, Any]:
    """The encoded example, or (a row a chat template cannot mask) an empty one with its ``problem``."""
    try:
        enc = encode(example, fmt, _tokenizer(tokenizer_dir), seq_len)
    except DataError as e:
        return {"input_ids": [], "labels": [], "truncated": False, "n_labels": 0, "problem": str(e)}
    return {"input_ids": enc.input_ids, "labels": enc.labels, "truncated": enc.truncated, "n_labels": enc.n_labels}


def encode_unit(unit: Unit, spec: JobSpec, tokenizer_dir: str, root: str) -> dict[str, Any]:
    """Read, check, encode and pack one unit; write its part files under ``root``. The summary
    the driver merges: ``error`` (the first bad row under ``on_bad_rows: error``), ``lines``,
    ``bad`` and, per split, the label report, row count, label tokens per row and longest row."""
    d, t = spec.dataset, spec.training
    bad = BadRowReport()
    reports = {s: LabelReport(0, t.seq_len, d.on_bad_rows) for s in ("train", "eval")}
    kept: dict[str, list[tuple[list[int], list[int]]]] = {"train": [], "eval": []}
    counts = {"lines": 0}

    def rows():
        for item in unit_rows(unit.file, d, unit.kind, unit.start, unit.end, line_ref):
            if item[0] == "lines":
                counts["lines"] = item[1]
            else:
                yield item

    try:
        for _, key, example in checked_examples(unit.file, rows(), d, bad):
            split = unit.split
            if split == "train" and held_out(t.seed, unit.file_idx, key, d.eval_fraction):
                split = "eval"
            e = _encode_one(example, d.format, tokenizer_dir, t.seq_len)
            report = reports[split]
            report.examples += 1
            report.add(example["source_row"], len(e["input_ids"]), e["n_labels"], e["truncated"], e.get("problem"))
            if e["n_labels"] > 0:
                kept[split].append((e["input_ids"], e["labels"]))
    except (DataError, StorageError) as e:
        return {"uid": unit.uid, "error": str(e), "storage": isinstance(e, StorageError), "lines": counts["lines"]}
    out: dict[str, Any] = {"uid": unit.uid, "error": None, "lines": counts["lines"], "bad": {"skipped": bad.skipped, "problems": dict(bad.problems), "examples": list(bad.examples)}}
    for split in ("train", "eval"):
        packed = to_rows(kept[split], t.seq_len, t.packing)
        if packed:
            write_part(join(root, split), unit.uid, packed)
        out[split] = {
            "report": dataclasses.asdict(reports[split]),
            "kept": len(kept[split]),
            "kept_tokens": sum(len(ids) for ids, _ in kept[split]),
            "n_labels": np.array([r["n_labels"] for r in packed], dtype=np.int32),
            "max_len": max((len(r["input_ids"]) for r in packed), default=0),
            "file": part_name(unit.uid) if packed else None,
        }
    return out


def run_local(units: list[Unit], spec: JobSpec, tokenizer_dir: str, root: str, on_unit):
    """Every unit in this process, in order; stops at the first error (the rows after it are moot)."""
    for u in units:
        summary = encode_unit(u, spec, tokenizer_dir, root)
        on_unit(summary)
        if summary["error"]:
            return


def ray_pays_off(remaining_s: float, cpus: float) -> bool:
    """Whether Ray Data tasks on ``cpus`` CPUs would end the rest sooner than this process, which
    needs ``remaining_s`` more seconds: never on fewer than 2 CPUs (a task is slower than here)."""
    return cpus >= 2 and RAY_START_S + remaining_s * RAY_TASK_COST / cpus < remaining_s


def run_adaptive(units: list[Unit], spec: JobSpec, tokenizer_dir: str, root: str, on_unit, cpus: float) -> None:
    """Tokenize in process, timing each unit, for as long as that is the faster way: once the
    rest (at the rate measured so far) would take longer here than Ray Data's start-up plus the
    rest spread over ``cpus`` CPUs, the remaining units go to Ray Data tasks. Same units, same
    cache either way; small datasets never pay Ray's start-up."""
    _tokenizer(tokenizer_dir)  # loaded once, before the clock: the rate is the units' own
    t0, done = time.perf_counter(), 0
    for i, u in enumerate(units):
        summary = encode_unit(u, spec, tokenizer_dir, root)
        on_unit(summary)
        if summary["error"] or i + 1 == len(units):
            return
        done += max(1, u.size)
        rest = units[i + 1:]
        remaining_s = (time.perf_counter() - t0) / done * sum(max(1, r.size) for r in rest)
        if ray_pays_off(remaining_s, cpus):
            run_ray(rest, spec, tokenizer_dir, root, on_unit)
            return


def run_ray(units: list[Unit], spec: JobSpec, tokenizer_dir: str, root: str, on_unit) -> None:
    """The same units as Ray Data tasks over the cluster's CPUs (one CPU each); summaries come
    back as they finish, in any order, as small pickles."""
    import ray.data

    fields = [dataclasses.asdict(u) for u in units]
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LORAFARM_", "HF_"))}

    def task(row: dict[str, Any]) -> dict[str, Any]:
        # the store's endpoint and credentials as the driver sees them; set here rather than as a
        # runtime_env, which would start fresh worker processes for every distinct environment
        os.environ.update(env)
        unit = Unit(**{k: (int(v) if isinstance(v, np.integer) else v) for k, v in row.items()})
        return {"summary": pickle.dumps(encode_unit(unit, spec, tokenizer_dir, root))}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(fields, override_num_blocks=len(fields))
    ds = ds.map(task, num_cpus=1)
    for row in ds.iter_rows():
        on_unit(pickle.loads(row["summary"]))
