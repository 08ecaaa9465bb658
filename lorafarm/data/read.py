"""Read examples (JSONL/JSON/Parquet, local or S3) and check every row for its format.

I/O goes through the fsspec filesystem of the URI; Parquet through pyarrow. JSONL is parsed
line by line so a bad row is named by its exact line number; Parquet row group by row group so
a corrupt one is named with its rows. ``on_bad_rows: skip`` drops rows that fail the format
checks; what is wrong with a whole file (corrupt or truncated Parquet, a column type no row can
satisfy, bytes that are not UTF-8, a file that cannot be read) is a DataError in either mode. On
object stores, transient failures are retried and end as a StorageError, never as "corrupt".
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import glob as globlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, StorageError
from ..spec import DatasetSpec
from ..storage import filesystem, is_remote, normalize, with_retries

SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")
T = TypeVar("T")


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

    def find() -> list[str]:
        if any(ch in path for ch in "*?["):
            return sorted(fs.glob(path)) if is_remote(uri) else sorted(globlib.glob(path, recursive=True))  # `**` as on S3
        if fs.isdir(path):
            return sorted(e for e in fs.ls(path, detail=False) if not fs.isdir(e))
        if fs.exists(path):
            return [path]
        if not is_remote(uri) and os.path.islink(_named(uri)):
            raise DataError(f"{uri}: a broken symbolic link (to {os.readlink(_named(uri))}) — restore its target or "
                            "fix dataset.uri")
        raise DataError(f"{uri}: not found — check dataset.uri (a file, a directory or a glob)")

    try:
        found = _io(uri, "listing", find)
    except OSError as e:
        raise DataError(f"{uri}: cannot list the data files ({_reason(e)}) — check dataset.uri and read access") from None
    files = [f for f in found if f.endswith(SUFFIXES)]
    if not files:
        raise DataError(f"{uri}: no .jsonl, .json or .parquet files there — point dataset.uri at the data files")
    return [prefix + f if prefix and not f.startswith(prefix) else f for f in files]


def fingerprint(uri: str) -> str:
    """Cheap dataset fingerprint: file names, sizes and ETags/mtimes (no full read)."""
    h = hashlib.sha256()
    for f in list_files(uri):
        fs, path = filesystem(f)
        try:
            info = _io(f, "looking up", lambda fs=fs, path=path: fs.info(path))
        except OSError as e:
            raise _unreadable(f, e) from None
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        h.update(json.dumps([f, info.get("size"), str(stamp)]).encode())
    return h.hexdigest()


def _io(uri: str, what: str, fn: Callable[[], T]) -> T:
    """``fn()``; on an object store, transient failures (a connection reset, a 5xx) are retried,
    and a :class:`StorageError` says so when they run out: an outage is not bad data."""
    return with_retries(fn, f"{what} {uri}") if is_remote(uri) else fn()


def _display(f: str) -> str:
    return f if is_remote(f) else normalize(f)


def _reason(e: BaseException) -> str:
    """An exception's message on one short line (pyarrow's span several and quote its input)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(e))
    text = " ".join(text.replace("Could not open Parquet input source '<Buffer>': ", "").split())
    text = text or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _named(f: str) -> str:
    """The file as listed, symbolic links not resolved (a broken link is named, not its target)."""
    if is_remote(f):
        return f
    return os.path.abspath(os.path.expanduser(f[len("file://"):] if f.startswith("file://") else f))


def _unreadable(f: str, e: OSError) -> DataError:
    name = _named(f)
    if not is_remote(f) and os.path.islink(name) and not os.path.exists(name):
        e = FileNotFoundError(e.errno, f"a broken symbolic link to {os.readlink(name)}")
    if isinstance(e, PermissionError):
        fix = "give the job read access to it, or remove it from dataset.uri"
    elif isinstance(e, FileNotFoundError):
        fix = "it was removed or is a broken link: restore it or remove it from dataset.uri"
    elif isinstance(e, IsADirectoryError):
        fix = "it is a directory: point dataset.uri at the data files"
    else:
        fix = "check the file and that its storage is reachable"
    return DataError(f"{name}: cannot read the file ({e.strerror or _reason(e)}) — {fix}")


def _check_regular(f: str, fs, path: str) -> None:
    """A local data file must be a regular file: a FIFO named ``x.jsonl`` would block the read forever."""
    if is_remote(f):
        return
    try:
        kind = fs.info(path)["type"]
    except OSError as e:
        raise _unreadable(f, e) from None
    if kind == "directory":
        raise DataError(f"{_named(f)}: a directory, not a data file — point dataset.uri at the data files")
    if kind != "file":
        raise DataError(f"{_named(f)}: not a regular file (a pipe, socket or device, which could block the read "
                        "forever) — point dataset.uri at regular data files")


CHUNK_BYTES = 1 << 20  # JSON/JSONL files are read this much at a time


@dataclass
class _TooLarge:
    """A row over ``dataset.max_row_bytes``: only its size was kept, never its bytes."""

    size: int
    limit: int
    unit: str = "line"

    def problem(self) -> str:
        return (f"{self.unit} is {self.size:,} bytes, over dataset.max_row_bytes = {self.limit:,} — split the "
                "example or raise the limit")


@contextlib.contextmanager
def _opened(f: str, fs, path: str):
    """``f`` open for reading, and a ``read(n)`` whose errors name the file and the fix."""
    try:
        fh = _io(f, "opening", lambda: fs.open(path, "rb"))
    except OSError as e:
        raise _unreadable(f, e) from None
    with fh:
        def read(n: int) -> bytes:
            try:
                return _io(f, "reading", lambda: fh.read(n))
            except OSError as e:
                raise _unreadable(f, e) from None

        yield fh, read


def _iter_rows(f: str, spec: DatasetSpec):
    """(row number, row) pairs; JSONL rows are 1-based line numbers, Parquet rows 0-based indices.

    JSON and JSONL are read in chunks of ``CHUNK_BYTES``: a line over ``dataset.max_row_bytes``
    is counted to its end and reported as a :class:`_TooLarge` row without being held, so no more
    than about ``max_row_bytes + CHUNK_BYTES`` of a file is in memory at once."""
    fs, path = filesystem(f)
    _check_regular(f, fs, path)
    if f.endswith(".parquet"):
        yield from _parquet_rows(f, fs, path, spec)
        return
    with _opened(f, fs, path) as (_fh, read):
        first = read(CHUNK_BYTES)
        if first.startswith(codecs.BOM_UTF8):  # not part of row 1
            first = first[len(codecs.BOM_UTF8):]
        head = first.lstrip()
        while not head and first and len(first) <= 8 * CHUNK_BYTES:  # a file starting with blank space
            more = read(CHUNK_BYTES)
            if not more:
                break
            first += more
            head = first.lstrip()
        if f.endswith(".json") and head.startswith(b"["):
            yield from _json_array(f, first, read, spec.max_row_bytes)
            return
        # JSONL lines end at "\n" only: str.splitlines() would also split inside JSON strings that
        # hold U+2028/U+2029/U+0085 unescaped (valid JSON), breaking rows and shifting line numbers.
        for n, line in _lines(first, read, spec.max_row_bytes):
            if isinstance(line, _TooLarge):
                yield n, line
                continue
            if not line.strip():
                continue
            text = _decode_line(f, line, n)
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, _Invalid(f"invalid JSON ({e.msg})")


def _lines(first: bytes, read: Callable[[int], bytes], limit: int):
    """(line number, bytes of the line without its "\\n", or _TooLarge): at most ``limit`` bytes
    of a line are kept; a longer one is only counted."""
    buf = bytearray()
    over: int | None = None  # bytes of an over-long line counted so far
    n = 1
    chunk = first
    while chunk:
        start = 0
        while True:
            i = chunk.find(b"\n", start)
            piece = chunk[start:] if i < 0 else chunk[start:i]
            if over is not None:
                over += len(piece)
            else:
                buf += piece
                if len(buf) > limit:
                    over, buf = len(buf), bytearray()
            if i < 0:
                break
            yield n, (_TooLarge(over, limit) if over is not None else bytes(buf))
            over, buf = None, bytearray()
            n += 1
            start = i + 1
        chunk = read(CHUNK_BYTES)
    if over is not None:
        yield n, _TooLarge(over, limit)
    elif buf:
        yield n, bytes(buf)


def _decode_line(f: str, line: bytes, n: int) -> str:
    """UTF-8 text of JSONL line ``n``; a bad byte names its row and column.

    An encoding error is a file-level problem, also under ``on_bad_rows: skip``: a file saved in
    another encoding has such bytes in many rows, and dropping them would bias the data."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"line {n}" if f.endswith(".json") else f"row {n}"
        raise DataError(f"{_display(f)}: not UTF-8 text at {where} (byte {line[e.start]:#04x} at column "
                        f"{e.start + 1}: {e.reason}) — save the file as UTF-8 (on_bad_rows: skip does not skip "
                        "encoding errors)") from None


class _ArrayReader:
    """A JSON array file, element by element, holding at most about ``limit`` bytes of it."""

    def __init__(self, name: str, first: bytes, read: Callable[[int], bytes], limit: int):
        self.name, self.read, self.limit = name, read, limit
        self.text, self.pos = "", 0  # decoded, not yet consumed text starts at ``pos``
        self.pending = first  # bytes not decoded yet (a character may straddle two reads)
        self.line_base = 0  # newlines in the text already dropped
        self.eof = False
        self.want = CHUNK_BYTES

    def refill(self) -> bool:
        """Decode more of the file onto the text; False at its end."""
        data, self.pending = self.pending, b""
        if not data:
            if self.eof:
                return False
            data = self.read(self.want)
            self.want = min(self.want * 2, max(self.limit, CHUNK_BYTES))
            if not data:
                self.eof = True
                return False
        try:
            chunk, used = codecs.utf_8_decode(data, "strict", False)
        except UnicodeDecodeError as e:
            before = data[:e.start]
            line = self.line_base + self.text.count("\n") + before.count(b"\n") + 1
            nl = before.rfind(b"\n")
            tail = self.text[self.text.rfind("\n") + 1:]
            col = e.start - nl if nl >= 0 else len(tail.encode()) + e.start + 1
            raise DataError(f"{self.name}: not UTF-8 text at line {line} (byte {data[e.start]:#04x} at column {col}: "
                            f"{e.reason}) — save the file as UTF-8 (on_bad_rows: skip does not skip encoding "
                            "errors)") from None
        self.pending = data[used:]
        if not chunk and self.pending and self.eof:
            raise DataError(f"{self.name}: not UTF-8 text at the end of the file (a truncated character) — save "
                            "the file as UTF-8")
        self.line_base += self.text.count("\n", 0, self.pos)
        self.text, self.pos = self.text[self.pos:] + chunk, 0
        return True

    def skip_space(self) -> None:
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text) or not self.refill():
                return

    def line(self, p: int | None = None) -> int:
        return self.line_base + self.text.count("\n", 0, self.pos if p is None else p) + 1

    def invalid(self, what: str) -> DataError:
        return DataError(f"{self.name}: invalid JSON at line {self.line()} ({what}) — fix the file")

    def rows(self):
        decoder = json.JSONDecoder()
        self.skip_space()
        self.pos += 1  # the "["
        index = 0
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                raise self.invalid("the array is not closed")
            if self.text[self.pos] == "]":
                self.pos += 1
                self.skip_space()
                if self.pos < len(self.text):
                    raise self.invalid("extra data after the array")
                return
            if index:
                if self.text[self.pos] != ",":
                    raise self.invalid("expected ',' or ']'")
                self.pos += 1
                self.skip_space()
            while True:
                try:
                    value, end = decoder.raw_decode(self.text, self.pos)
                    if end < len(self.text) or self.eof:  # a number could go on in the next read
                        break
                except json.JSONDecodeError as e:
                    if self.eof:
                        raise DataError(f"{self.name}: invalid JSON at line {self.line_base + e.lineno} ({e.msg}) — "
                                        "fix the file") from None
                if len(self.text[self.pos:].encode()) > self.limit:
                    raise DataError(
                        f"{self.name}: element {index} (from line {self.line()}) does not end within "
                        f"dataset.max_row_bytes = {self.limit:,} bytes (too large, or invalid JSON) — split the "
                        "example, write the file as JSONL, or raise the limit")
                self.refill()
            size = len(self.text[self.pos:end].encode())
            yield index, (_TooLarge(size, self.limit, "element") if size > self.limit else value)
            self.pos = end
            index += 1


def _json_array(f: str, first: bytes, read: Callable[[int], bytes], limit: int):
    """(index, element) of a JSON array file, parsed element by element from a bounded buffer."""
    yield from _ArrayReader(_display(f), first, read, limit).rows()


def _row_bytes(row: dict[str, Any], spec: DatasetSpec) -> int:
    """UTF-8 bytes of a row's text cells (the columns its format reads)."""
    total = 0
    for column, _, is_messages in _required_columns(spec):
        value = row.get(column)
        if isinstance(value, str):
            total += len(value.encode())
        elif is_messages and isinstance(value, list):
            for m in value:
                if isinstance(m, dict):
                    total += sum(len(v.encode()) for v in m.values() if isinstance(v, str))
    return total


def _parquet_rows(f: str, fs, path: str, spec: DatasetSpec, groups_from: int = 0, groups_to: int | None = None):
    """Rows of a Parquet file (row groups ``groups_from`` up to ``groups_to``), read row group by
    row group so a corrupt one is named; row numbers count from the file's first row.

    Corruption (a missing footer, a row group that does not decode or fails its page checksum)
    and a column type no row can satisfy are errors also under ``on_bad_rows: skip``: that
    option drops individual bad rows, never silently a part of a file."""
    name = _display(f)
    try:
        fh = _io(f, "opening", lambda: fs.open(path, "rb"))
    except OSError as e:
        raise _unreadable(f, e) from None
    with fh:
        try:
            pf = _io(f, "reading the footer of", lambda: pq.ParquetFile(fh, page_checksum_verification=True))
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        except StorageError:
            raise
        except (PermissionError, FileNotFoundError) as e:
            raise _unreadable(f, e) from None
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            raise DataError(f"{name}: not a readable Parquet file ({_reason(e)}) — it is truncated (an interrupted "
                            "upload or copy?) or not Parquet: re-write or re-upload it") from None
        if sum(groups):
            _check_schema(name, pf.schema_arrow, spec)
        start = sum(groups[:groups_from])
        for g, n in enumerate(groups):
            if not n or g < groups_from or (groups_to is not None and g >= groups_to):
                continue
            columns = [c for c, _, _ in _required_columns(spec)]
            try:
                table = _io(f, f"reading row group {g} of", lambda g=g, columns=columns: pf.read_row_group(g, columns=columns))
            except StorageError:
                raise
            except (PermissionError, FileNotFoundError) as e:  # e.g. the object was deleted mid-read
                raise _unreadable(f, e) from None
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"{name}: row group {g} of {len(groups)} (rows {start}-{start + n - 1}) is corrupt ({_reason(e)})"
                    " — re-write the file from its source or remove it from dataset.uri (on_bad_rows: skip does not"
                    " skip corrupt data)") from None
            for off in range(0, table.num_rows, 1024):  # Python objects for a slice at a time
                for i, row in enumerate(table.slice(off, 1024).to_pylist(), start=start + off):
                    size = _row_bytes(row, spec)
                    yield i, (_TooLarge(size, spec.max_row_bytes, "row") if size > spec.max_row_bytes else row)
            del table
            start += n


def _required_columns(spec: DatasetSpec) -> list[tuple[str, str, bool]]:
    """(column, spec option naming it, whether it holds messages) for the format."""
    if spec.format == "text":
        return [(spec.text_column, "text_column", False)]
    if spec.format == "prompt_completion":
        return [(spec.prompt_column, "prompt_column", False), (spec.completion_column, "completion_column", False)]
    return [(spec.messages_column, "messages_column", True)]


def _check_schema(name: str, schema: pa.Schema, spec: DatasetSpec) -> None:
    """A Parquet column has one type for all its rows: a wrong one makes every row bad, so it is
    named once, for the file, instead of failing (or, under skip, dropping) each row."""
    for column, option, is_messages in _required_columns(spec):
        if column not in schema.names:
            raise DataError(f"{name} row 0: column {column!r} is missing (the file has: {', '.join(schema.names)}) "
                            f"— add it or set dataset.{option}")
        t = schema.field(column).type
        if is_messages and not _is_messages(t):
            raise DataError(
                f"{name} row 0: column {column!r} must be a list of {{role, content}} messages, got {t} for the whole "
                f"file — write it as a list of structs with string role and content, or set dataset.{option}")
        if not is_messages and not _is_text(t):
            raise DataError(f"{name} row 0: column {column!r} must be text, got {t} for the whole file — write the "
                            f"column as strings, or set dataset.{option} to a text column")


def _storage(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    t = _storage(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_messages(t: pa.DataType) -> bool:
    t = _storage(t)
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_list_view,
             pa.types.is_large_list_view)
    if not any(is_list(t) for is_list in lists) or not pa.types.is_struct(t.value_type):
        return False
    fields = {f.name: f.type for f in t.value_type}
    return all(k in fields and _is_text(fields[k]) for k in ("role", "content"))


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


def checked_examples(f: str, rows, spec: DatasetSpec, report: BadRowReport):
    """(row number, key, example with ``source_row``) of the usable ``rows`` of file ``f``; a bad
    row raises (``on_bad_rows: error``) or is counted in ``report`` (``skip``)."""
    name = _display(f)
    for item in rows:
        n, raw = item[0], item[-1]
        if isinstance(raw, _TooLarge):
            if spec.on_bad_rows == "error":
                raise DataError(f"{name}: {raw.unit} {n} is {raw.size:,} bytes, over dataset.max_row_bytes = "
                                f"{raw.limit:,} — split the example or raise the limit (or set "
                                "dataset.on_bad_rows: skip)")
            report.add(f"{name} row {n}", raw.problem())
            continue
        example, problem = check_row(raw, spec)
        if problem:
            if spec.on_bad_rows == "error":
                raise DataError(f"{name} row {n}: {problem} (or set dataset.on_bad_rows: skip)")
            report.add(f"{name} row {n}", problem)
            continue
        example["source_row"] = f"{name}:{n}"
        yield n, (item[1] if len(item) == 3 else n), example


def read_examples(uri: str, spec: DatasetSpec) -> tuple[pa.Table, BadRowReport]:
    """Every usable example of ``uri`` as a table of normalised columns plus ``source_row``
    (the whole dataset in memory: for checks and evaluation; training streams with
    :mod:`lorafarm.data.stream`)."""
    report = BadRowReport()
    rows: list[dict[str, Any]] = []
    for f in list_files(uri):
        rows.extend(example for _, _, example in checked_examples(f, _iter_rows(f, spec), spec, report))
    return pa.Table.from_pylist(rows) if rows else pa.table({"source_row": pa.array([], pa.string())}), report


def file_size(f: str) -> int:
    """Bytes of data file ``f`` (retried on an object store)."""
    fs, path = filesystem(f)
    try:
        return int(_io(f, "looking up", lambda: fs.info(path))["size"] or 0)
    except OSError as e:
        raise _unreadable(f, e) from None


def parquet_groups(f: str) -> list[int] | None:
    """Rows per row group of Parquet file ``f`` from its footer, or None when the footer does not
    read (the unit that reads the file then names the problem)."""
    fs, path = filesystem(f)
    try:
        with _io(f, "opening", lambda: fs.open(path, "rb")) as fh:
            md = _io(f, "reading the footer of", lambda: pq.ParquetFile(fh).metadata)
            return [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    except StorageError:
        raise
    except Exception:  # noqa: BLE001 - named by the unit that reads it
        return None


def range_rows(f: str, spec: DatasetSpec, start: int, end: int, line_ref: Callable[[int], str]):
    """(line reference, byte offset, row) of the JSONL lines of ``f`` that *start* in bytes
    ``[start, end)``: a Ray Data task reads its own range of a big file. Lines are counted from
    the range's first line (``line_ref`` turns that count into a reference the driver resolves
    into the file's line number); the offset is the line's first byte, a row key that does not
    depend on how the file is split. The last element yielded is ``("lines", count)``."""
    fs, path = filesystem(f)
    _check_regular(f, fs, path)
    with _opened(f, fs, path) as (fh, read):
        pos = start
        if start:
            _io(f, "seeking in", lambda: fh.seek(start - 1))
            base = start - 1  # the file offset of the next byte read
            while True:  # the line that started before ``start`` belongs to the previous range
                more = read(CHUNK_BYTES)
                if not more:
                    yield "lines", 0
                    return
                i = more.find(b"\n")
                if i >= 0:
                    first, pos = more[i + 1:], base + i + 1
                    break
                base += len(more)
        else:
            first = read(CHUNK_BYTES)
            if first.startswith(codecs.BOM_UTF8):
                first, pos = first[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
        count = 0
        if pos >= end:
            yield "lines", 0
            return
        for n, line in _lines(first, read, spec.max_row_bytes):
            count = n
            offset = pos
            pos += (line.size if isinstance(line, _TooLarge) else len(line)) + 1
            if isinstance(line, _TooLarge):
                yield line_ref(n), offset, line
            elif line.strip():
                ref = line_ref(n)
                text = _decode_line(f, line, ref)
                try:
                    yield ref, offset, json.loads(text)
                except json.JSONDecodeError as e:
                    yield ref, offset, _Invalid(f"invalid JSON ({e.msg})")
            if pos >= end:
                break
        yield "lines", count


def unit_rows(f: str, spec: DatasetSpec, kind: str, start: int, end: int, line_ref: Callable[[int], str]):
    """The rows of one unit of work: a byte range of a JSONL file (:func:`range_rows`), row groups
    ``[start, end)`` of a Parquet file, or a whole JSON file; as (reference, key, row), then
    ``("lines", count)`` for JSONL ranges."""
    if kind == "lines":
        yield from range_rows(f, spec, start, end, line_ref)
        return
    if kind == "groups":
        fs, path = filesystem(f)
        _check_regular(f, fs, path)
        rows = _parquet_rows(f, fs, path, spec, start, end)
    else:
        rows = _iter_rows(f, spec)
    for n, row in rows:
        yield n, n, row
