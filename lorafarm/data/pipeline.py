"""Tokenize a job's data once, streaming, and cache the result in the store.

The data is cut into units (:mod:`lorafarm.data.stream`) that Ray Data tasks read, encode and
pack over the cluster's CPUs, each writing one bounded Parquet part file; the driver merges only
their small summaries into ``stats.json`` and the index (:mod:`lorafarm.data.cache_index`). Small
datasets run the same units in process, which gives the same cache byte for byte.

The cache key covers everything that changes the rows: dataset fingerprint, eval source,
tokenizer files, format, column names, seq_len, packing, eval split and seed, and how the data is
cut into units. A second job on the same data finds ``_SUCCESS`` and reads only ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, StorageError
from ..spec import JobSpec
from ..storage import Store, exists, join, read_bytes, write_bytes
from . import stream
from .cache_index import ROW_SCHEMA, load_rows, write_index
from .formats import FORMAT_VERSION
from .labels import LabelReport
from .read import BadRowReport, fingerprint

__all__ = ["ROW_SCHEMA", "Prepared", "cache_key", "load_rows", "prepare", "tokenizer_digest"]

LOCAL_BELOW_BYTES = 1 << 20  # tokenize in process below this much data (one unit): no Ray Data start-up
NAMED_IN_STATS = 20  # rows that lose every label, named in stats.json
UNMASKABLE = "the chat template cannot be masked"
LAYOUT = 2  # the cache's file layout (2: part files + index per split)
PROGRESS_EVERY_S = 5.0  # a progress line at most this often (they are logged)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja")


@dataclass
class Prepared:
    train_uri: str
    eval_uri: str | None
    stats: dict[str, Any]
    fingerprint: str
    cache_hit: bool


def tokenizer_digest(tokenizer_dir: str) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = Path(tokenizer_dir) / name
        if p.exists():
            h.update(name.encode() + p.read_bytes())
    return h.hexdigest()


def cache_key(spec: JobSpec, data_fp: str, eval_fp: str | None, tok_digest: str) -> str:
    d, t = spec.dataset, spec.training
    blob = json.dumps({
        "v": FORMAT_VERSION, "data": data_fp, "eval": eval_fp, "tok": tok_digest, "format": d.format,
        "columns": [d.text_column, d.prompt_column, d.completion_column, d.messages_column],
        "seq_len": t.seq_len, "packing": t.packing, "eval_fraction": d.eval_fraction, "seed": t.seed,
        "on_bad_rows": d.on_bad_rows, "layout": LAYOUT, "unit_bytes": stream.UNIT_BYTES, "unit_rows": stream.UNIT_ROWS,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare(spec: JobSpec, tokenizer_dir: str, store: Store, *, parallel: bool = True,
            on_progress: Callable[[str], None] | None = None) -> Prepared:
    """The job's tokenized cache entry (made now on a miss). ``parallel``: Ray Data tasks when Ray
    is up and the data is not small; ``on_progress`` gets a line (rows/s, ETA) every few seconds."""
    d = spec.dataset
    data_fp = fingerprint(d.uri)
    eval_fp = fingerprint(d.eval_uri) if d.eval_uri else None
    key = cache_key(spec, data_fp, eval_fp, tokenizer_digest(tokenizer_dir))
    root = store.cache_uri(spec.tenant, "tokenized", key)
    train_uri, eval_uri = join(root, "train"), join(root, "eval")
    if exists(join(root, "_SUCCESS")):
        stats = json.loads(read_bytes(join(root, "stats.json")))
        return Prepared(train_uri, eval_uri if stats["eval_rows"] else None, stats, data_fp, True)

    units = stream.plan_units(d.uri, "train")
    if d.eval_uri:
        units += stream.plan_units(d.eval_uri, "eval", first_uid=len(units))
    total_bytes = sum(u.size for u in units)
    big = len(units) > 1 and total_bytes >= LOCAL_BELOW_BYTES
    merger = _Merger(units, on_progress)
    if parallel and big and _ray_ready():  # in process while that is faster, then Ray Data tasks
        stream.run_adaptive(units, spec, tokenizer_dir, root, merger.add, cpus=_free_cpus())
    else:
        stream.run_local(units, spec, tokenizer_dir, root, merger.add)
    return merger.finish(spec, root, train_uri, eval_uri, data_fp)


class _Merger:
    """Folds the units' summaries (arriving in any order) into stats and the index, in unit order."""

    def __init__(self, units: list[stream.Unit], on_progress: Callable[[str], None] | None):
        self.units = units
        self.summaries: dict[int, dict[str, Any]] = {}
        self.on_progress = on_progress
        self.started = self.last = time.monotonic()
        self.total_bytes = max(1, sum(u.size for u in units))
        self.done_bytes = self.done_rows = 0

    def add(self, summary: dict[str, Any]) -> None:
        self.summaries[summary["uid"]] = summary
        u = self.units[summary["uid"]]
        self.done_bytes += u.size
        if not summary["error"]:
            self.done_rows += sum(summary[s]["report"]["examples"] for s in ("train", "eval"))
        now = time.monotonic()
        if self.on_progress and (now - self.last >= PROGRESS_EVERY_S or len(self.summaries) == len(self.units)):
            self.last = now
            self.on_progress(progress_line(self.done_rows, self.done_bytes, self.total_bytes, now - self.started))

    def _bases(self) -> dict[int, int]:
        """The line number before each unit's first line, in its file (JSONL ranges)."""
        bases, before = {}, {}
        for u in self.units:
            k = (u.split, u.file_idx)
            bases[u.uid] = before.get(k, 0)
            s = self.summaries.get(u.uid)
            before[k] = bases[u.uid] + (s["lines"] if s else 0)
        return bases

    def finish(self, spec: JobSpec, root: str, train_uri: str, eval_uri: str, data_fp: str) -> Prepared:
        bases = self._bases()
        for u in self.units:  # the first bad row in file order, as one process reading the files would find
            s = self.summaries.get(u.uid)
            if s is None:
                raise DataError(f"{u.file}: a tokenization task returned nothing — resubmit (a lorafarm bug if it "
                                "repeats)")
            if s["error"]:
                text = stream.resolve(s["error"], bases[u.uid])
                raise StorageError(text) if s["storage"] else DataError(text)
        d, t = spec.dataset, spec.training
        bad = BadRowReport()
        labels = {sp: LabelReport(0, t.seq_len, d.on_bad_rows) for sp in ("train", "eval")}
        index: dict[str, dict[str, Any]] = {sp: {"files": [], "n_labels": [], "max_len": 0, "kept": 0, "tokens": 0}
                                            for sp in ("train", "eval")}
        for u in self.units:
            s, base = self.summaries[u.uid], bases[u.uid]
            b = s["bad"]
            bad.skipped += b["skipped"]
            bad.problems = Counter(bad.problems) + Counter(b["problems"])
            bad.examples += [stream.resolve(x, base) for x in b["examples"]][: 5 - len(bad.examples)]
            for sp in ("train", "eval"):
                part, rep, ix = s[sp], s[sp]["report"], index[sp]
                lr = labels[sp]
                lr.examples += rep["examples"]
                lr.tokens += rep["tokens"]
                lr.label_tokens += rep["label_tokens"]
                lr.truncated += rep["truncated"]
                for name in ("cut", "masked", "unusable"):
                    getattr(lr, name).extend(stream.resolve(x, base) for x in rep[name])
                if part["file"]:
                    ix["files"].append((part["file"], len(part["n_labels"])))
                    ix["n_labels"].append(part["n_labels"])
                    ix["max_len"] = max(ix["max_len"], part["max_len"])
                ix["kept"] += part["kept"]
                ix["tokens"] += part["kept_tokens"]
        train, ev = labels["train"], labels["eval"]
        problems = train.problems()
        if ev.unusable and d.on_bad_rows == "error":  # an eval set that trains on nothing is only left out
            problems.append(f"dataset (eval): {ev.unusable[0]} (or set dataset.on_bad_rows: skip)")
        if problems:
            raise DataError("\n".join(problems))
        n_labels = {sp: np.concatenate(ix["n_labels"]) if ix["n_labels"] else np.zeros(0, np.int32)
                    for sp, ix in index.items()}
        stats = {
            "examples": train.examples,
            "skipped_bad_rows": bad.skipped + len(train.unusable),
            "bad_row_problems": dict(bad.problems) | ({UNMASKABLE: len(train.unusable)} if train.unusable else {}),
            "all_masked_dropped": len(train.rows()),
            "all_masked_rows": train.rows()[:NAMED_IN_STATS],
            "warnings": train.warnings(),
            "truncated": train.truncated,
            "tokens": index["train"]["tokens"],
            "label_tokens": int(n_labels["train"].sum()),
            "rows": len(n_labels["train"]),
            "eval_examples": index["eval"]["kept"],
            "eval_examples_read": ev.examples,  # before all-masked eval rows are left out
            "eval_rows": len(n_labels["eval"]),
            "cache_files": len(index["train"]["files"]) + len(index["eval"]["files"]),
        }
        write_index(train_uri, index["train"]["files"], n_labels["train"], index["train"]["max_len"])
        if stats["eval_rows"]:
            write_index(eval_uri, index["eval"]["files"], n_labels["eval"], index["eval"]["max_len"])
        write_bytes(join(root, "stats.json"), json.dumps(stats, sort_keys=True).encode())
        write_bytes(join(root, "_SUCCESS"), b"")
        return Prepared(train_uri, eval_uri if stats["eval_rows"] else None, stats, data_fp, False)


def progress_line(rows: int, done_bytes: int, total_bytes: int, elapsed: float) -> str:
    """``tokenizing: 12,000 rows (34%), 5,100 rows/s, ETA 4 s``: the ETA from the bytes read so far."""
    share = min(1.0, done_bytes / max(total_bytes, 1))
    rate = rows / elapsed if elapsed > 0 else 0.0
    eta = elapsed * (1 - share) / share if share > 0 else float("nan")
    eta_text = f"ETA {eta:,.0f} s" if share < 1 and eta == eta else "done"
    return f"tokenizing: {rows:,} rows ({share:.0%}), {rate:,.0f} rows/s, {eta_text}"


def _free_cpus() -> float:
    """The CPUs Ray Data tasks could use now."""
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def _ray_ready() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False
