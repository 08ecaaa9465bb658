"""Read examples (JSONL/JSON/Parquet, local or S3) and check every row for its format.

I/O goes through the fsspec filesystem of the URI; Parquet through pyarrow. JSONL is parsed
line by line so a bad row is named by its exact line number.
"""

from __future__ import annotations

import collections
import glob as globlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..spec import DatasetSpec
from ..storage import filesystem, is_remote, normalize

SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")


@dataclass
class BadRowReport:
    """What ``on_bad_rows: skip`` dropped: counts per problem and the first few examples."""

    skipped: int = 0
    problems: dict[str, int] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        self.skipped += 1
        self.problems[problem.split(" — ")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {problem}")


def list_files(uri: str) -> list[str]:
    """The data files a URI names: one file, a directory of them, or a glob (sorted)."""
    fs, path = filesystem(uri)
    prefix = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path)) if is_remote(uri) else sorted(globlib.glob(path, recursive=True))  # `**` as on S3
    elif fs.isdir(path):
        found = sorted(e for e in fs.ls(path, detail=False) if not fs.isdir(e))
    elif fs.exists(path):
        found = [path]
    else:
        raise DataError(f"{uri}: not found — check dataset.uri (a file, a directory or a glob)")
    files = [f for f in found if f.endswith(SUFFIXES)]
    if not files:
        raise DataError(f"{uri}: no .jsonl, .json or .parquet files there — point dataset.uri at the data files")
    return [prefix + f if prefix and not f.startswith(prefix) else f for f in files]


def fingerprint(uri: str) -> str:
    """Cheap dataset fingerprint: file names, sizes and ETags/mtimes (no full read)."""
    h = hashlib.sha256()
    for f in list_files(uri):
        fs, path = filesystem(f)
        info = fs.info(path)
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        h.update(json.dumps([f, info.get("size"), str(stamp)]).encode())
    return h.hexdigest()


def _display(f: str) -> str:
    return f if is_remote(f) else normalize(f)


def _iter_rows(f: str):
    """(row number, row) pairs; JSONL rows are 1-based line numbers, Parquet rows 0-based indices."""
    fs, path = filesystem(f)
    if f.endswith(".parquet"):
        try:
            with fs.open(path, "rb") as fh:
                table = pq.read_table(fh)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            raise DataError(f"{_display(f)}: unreadable Parquet ({e}) — re-write the file") from None
        for i, row in enumerate(table.to_pylist()):
            yield i, row
        return
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of row 1
    except UnicodeDecodeError as e:
        raise DataError(f"{_display(f)}: not UTF-8 text ({e}) — save the file as UTF-8") from None
    stripped = text.lstrip()
    if f.endswith(".json") and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{_display(f)}: invalid JSON at line {e.lineno} ({e.msg}) — fix the file") from None
        for i, row in enumerate(rows):
            yield i, row
        return
    # JSONL lines end at "\n" only: str.splitlines() would also split inside JSON strings that
    # hold U+2028/U+2029/U+0085 unescaped (valid JSON), breaking rows and shifting line numbers.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, _Invalid(f"invalid JSON ({e.msg})")


@dataclass
class _Invalid:
    problem: str


def check_row(row: Any, spec: DatasetSpec) -> tuple[dict[str, Any] | None, str | None]:
    """(normalised example, None) or (None, problem — fix)."""
    if isinstance(row, _Invalid):
        return None, f"{row.problem} — each line must be one JSON object"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__} — each row must be an object"
    if spec.format == "text":
        return _text_field(row, spec.text_column, "text_column", "text")
    if spec.format == "prompt_completion":
        prompt, p1 = _text_field(row, spec.prompt_column, "prompt_column", "prompt", allow_empty=True)
        if p1:
            return None, p1
        completion, p2 = _text_field(row, spec.completion_column, "completion_column", "completion")
        if p2:
            return None, p2
        return {"prompt": prompt["prompt"], "completion": completion["completion"]}, None
    return _messages(row, spec.messages_column)


def _text_field(row, column, option, key, allow_empty=False):
    if column not in row:
        return None, f"column {column!r} is missing — add it or set dataset.{option}"
    value = row[column]
    if not isinstance(value, str):
        return None, f"column {column!r} must be text, got {type(value).__name__} — store it as a string"
    if not allow_empty and not value.strip():
        return None, f"column {column!r} is empty — remove the row or fill it"
    return {key: value}, None


def _messages(row, column):
    if column not in row:
        return None, f"column {column!r} is missing — add it or set dataset.messages_column"
    msgs = row[column]
    if not isinstance(msgs, list) or not msgs:
        return None, f"column {column!r} must be a non-empty list of {{role, content}} messages"
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None, f"message {i} must be an object with string 'role' and 'content'"
        if m["role"] not in ROLES:
            return None, f"message {i} has role {m['role']!r} — use one of {', '.join(ROLES)}"
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        return None, "no assistant turn, so nothing to learn — add an assistant message or drop the row"
    return {"messages": out}, None


def read_examples(uri: str, spec: DatasetSpec) -> tuple[pa.Table, BadRowReport]:
    """Every usable example of ``uri`` as a table of normalised columns plus ``source_row``."""
    report = BadRowReport()
    rows: list[dict[str, Any]] = []
    for f in list_files(uri):
        name = _display(f)
        for n, raw in _iter_rows(f):
            example, problem = check_row(raw, spec)
            if problem:
                if spec.on_bad_rows == "error":
                    raise DataError(f"{name} row {n}: {problem} (or set dataset.on_bad_rows: skip)")
                report.add(f"{name} row {n}", problem)
                continue
            example["source_row"] = f"{name}:{n}"
            rows.append(example)
    return pa.Table.from_pylist(rows) if rows else pa.table({"source_row": pa.array([], pa.string())}), report
