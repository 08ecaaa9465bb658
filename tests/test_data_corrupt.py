"""Corrupt and unreadable local files fail fast with one line naming the file, the row group or
row, and the fix: corrupt or truncated Parquet, unreadable paths, bad encodings, wrong column
types, corrupt cached rows."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    cache_data,
    cache_spec,
    fails_fast,
    multi_group_parquet,
    overwrite,
    spec_for,
    write_jsonl,
)

from lorafarm.data import (
    list_files,
    load_rows,
    prepare,
    read_examples,
)
from lorafarm.errors import DataError
from lorafarm.storage import Store


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("where", ["page_header", "compressed_data"])
def test_corrupt_parquet_row_group_names_file_and_row_group(tmp_path, mode, where):
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    offset = start if where == "page_header" else start + chunk.total_compressed_size // 2
    overwrite(f, offset, b"\xff" * 8)  # the footer stays valid: the file opens, row group 1 does not decode
    assert pq.ParquetFile(f).metadata.num_row_groups == 3
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows=mode)))
    assert msg.startswith(f"{f}: row group 1 of 3 (rows 10-19) is corrupt ("), msg
    assert "re-write the file from its source" in msg
    # skip drops bad rows; a corrupt row group is file-level corruption and never silently dropped
    assert "on_bad_rows: skip does not skip corrupt data" in msg


def test_page_checksums_are_verified(tmp_path):
    # without compression a flipped byte still decodes, as other text; the page CRC catches it
    f = multi_group_parquet(tmp_path / "crc.parquet", compression="none", use_dictionary=False,
                            write_page_checksum=True)
    chunk = pq.ParquetFile(f).metadata.row_group(2).column(0)
    overwrite(f, chunk.data_page_offset + chunk.total_compressed_size - 3, b"Z")
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows="skip")))
    assert msg.startswith(f"{f}: row group 2 of 3 (rows 20-29) is corrupt (") and "checksum" in msg, msg


@pytest.mark.parametrize("cut", ["half", "footer_only", "empty"])
def test_truncated_parquet_is_a_clear_error(tmp_path, cut):
    f = multi_group_parquet(tmp_path / "t.parquet")
    raw = f.read_bytes()
    f.write_bytes({"half": raw[: len(raw) // 2], "footer_only": raw[:-8], "empty": b""}[cut])
    for mode in ("error", "skip"):
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, on_bad_rows=m)))
        assert msg.startswith(f"{f}: not a readable Parquet file ("), msg
        assert "truncated" in msg and "re-write or re-upload it" in msg


@pytest.mark.parametrize("case", [
    pytest.param("permission", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root reads files whatever their mode (test_permission_denied_is_named_also_as_root "
                                  "covers root)")),
    "directory", "dangling_link", "fifo"])
def test_unreadable_file_is_named_not_a_hang(tmp_path, case):
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": "fine"}])
    bad = d / "x.jsonl"
    uri = str(d)
    if case == "permission":
        write_jsonl(bad, [{"text": "secret"}])
        bad.chmod(0)
        hint = "Permission denied"
    elif case == "directory":
        bad.mkdir()  # a directory listing leaves sub-directories out; a glob does not
        uri, hint = str(d / "*.jsonl"), "a directory, not a data file"
    elif case == "dangling_link":
        bad.symlink_to(tmp_path / "gone.jsonl")
        hint = f"a broken symbolic link to {tmp_path / 'gone.jsonl'}"
    else:
        os.mkfifo(bad)  # opening it would block until a writer comes
        hint = "not a regular file"
    try:
        for mode in ("error", "skip"):
            msg = fails_fast(lambda m=mode: read_examples(uri, spec_for(uri, on_bad_rows=m)))
            assert msg.startswith(f"{bad}: "), msg
            assert hint in msg and ("dataset.uri" in msg), msg
        if case == "dangling_link":  # prepare() fingerprints the files before reading them
            from lorafarm.data import fingerprint

            assert fails_fast(lambda: fingerprint(uri)).startswith(f"{bad}: cannot read the file")
            direct = fails_fast(lambda: list_files(str(bad)))
            assert direct.startswith(f"{bad}: a broken symbolic link"), direct
    finally:
        if case == "permission":
            bad.chmod(0o644)


def test_invalid_utf8_names_its_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n{"text": "four"}\n')
    for mode in ("error", "skip"):  # an encoding error is the file's, not one row's: skip does not hide it
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, on_bad_rows=m)))
        assert msg.startswith(f"{f}: not UTF-8 text at row 3 (byte 0xe9 at column 14"), msg
        assert "save the file as UTF-8" in msg
    g = tmp_path / "bom.jsonl"  # a byte-order mark does not shift the row number
    g.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "\xff"}\r\n')
    assert fails_fast(lambda: read_examples(str(g), spec_for(g))).startswith(f"{g}: not UTF-8 text at row 2 ")


@pytest.mark.parametrize("fmt,table,problem", [
    ("text", {"text": [1, 2, 3]}, "column 'text' must be text, got int64 for the whole file"),
    ("text", {"text": [None, None]}, "column 'text' must be text, got null for the whole file"),
    ("text", {"body": ["a", "b"]}, "column 'text' is missing (the file has: body)"),
    ("prompt_completion", {"prompt": ["p"], "completion": [1.5]}, "column 'completion' must be text, got double"),
    ("chat", {"messages": ['[{"role": "user"}]']}, "column 'messages' must be a list of {role, content} messages, "
                                                   "got string for the whole file"),
    ("chat", {"messages": [[{"role": "user", "text": "hi"}]]}, "column 'messages' must be a list of {role, content}"),
])
def test_parquet_column_of_the_wrong_type_names_file_column_and_fix(tmp_path, fmt, table, problem):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table(table), f)
    option = {"text": "text_column", "chat": "messages_column"}.get(fmt, "completion_column")
    for mode in ("error", "skip"):  # no row of the file could pass: skip would silently drop the whole file
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, fmt, on_bad_rows=m)))
        assert msg.startswith(f"{f} row 0: {problem}"), msg
        assert f"set dataset.{option}" in msg


def test_parquet_text_column_types_that_read_as_strings(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode(),
                             "big": pa.array(["x", "y", "z"], pa.large_string())}), f)
    assert read_examples(str(f), spec_for(f))[0].column("text").to_pylist() == ["a", "b", "a"]
    assert read_examples(str(f), spec_for(f, text_column="big"))[0].column("text").to_pylist() == ["x", "y", "z"]
    # rows are still checked one by one within a well-typed file: a null string row is skipped and counted
    g = multi_group_parquet(tmp_path / "g.parquet")
    table = pq.read_table(g).to_pylist()
    table[14]["text"] = None
    pq.write_table(pa.Table.from_pylist(table), g, row_group_size=10)
    with pytest.raises(DataError, match=rf"^{g} row 14: column 'text' must be text, got NoneType"):
        read_examples(str(g), spec_for(g))
    kept, report = read_examples(str(g), spec_for(g, on_bad_rows="skip"))
    assert len(kept) == 29 and report.skipped == 1
    assert kept.column("source_row").to_pylist()[13:15] == [f"{g}:13", f"{g}:15"]


def test_prepare_fails_fast_on_a_corrupt_row_group(tmp_path, tiny_tokenizer_dir):
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(2).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    store = Store.open(str(tmp_path / "store"))
    for mode in ("error", "skip"):
        spec = cache_spec(f, **{"dataset.on_bad_rows": mode})
        msg = fails_fast(lambda s=spec: prepare(s, tiny_tokenizer_dir, store, parallel=False), seconds=10)
        assert msg.startswith(f"{f}: row group 2 of 3 (rows 20-29) is corrupt"), msg
    assert not list((tmp_path / "store").rglob("_SUCCESS"))  # nothing half-made is cached


def test_corrupt_cached_rows_are_a_data_error(tmp_path, tiny_tokenizer_dir):
    data = cache_data(tmp_path / "d.jsonl")
    prepared = prepare(cache_spec(data), tiny_tokenizer_dir, Store.open(str(tmp_path / "store")), parallel=False)
    entry = Path(prepared.train_uri).parent
    (cached,) = Path(prepared.train_uri).glob("part-*.parquet")
    cached.write_bytes(cached.read_bytes()[:-20])
    msg = fails_fast(lambda: load_rows(prepared.train_uri))
    assert msg.startswith(f"{cached}: the cached tokenized rows are corrupt ("), msg
    assert f"delete {entry} (the cache entry)" in msg
    index = Path(prepared.train_uri) / "index.json"
    index.write_text(index.read_text()[:-5])
    msg = fails_fast(lambda: load_rows(prepared.train_uri))
    assert msg.startswith(f"{index}: the cached tokenized rows are corrupt ("), msg
    assert f"delete {entry} (the cache entry)" in msg


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_permission_denied_is_named_also_as_root(tmp_path, monkeypatch, suffix):
    """The chmod case above cannot deny root; the same error, raised by the filesystem, here."""
    from fsspec.implementations.local import LocalFileSystem

    f = tmp_path / f"x.{suffix}"
    if suffix == "jsonl":
        write_jsonl(f, [{"text": "secret"}])
    else:
        multi_group_parquet(f)
    real_open = LocalFileSystem._open

    def denied(self, path, *a, **kw):
        if str(path).endswith(f.name):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(self, path, *a, **kw)

    monkeypatch.setattr(LocalFileSystem, "_open", denied)
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows="skip")))
    assert msg == f"{f}: cannot read the file (Permission denied) — give the job read access to it, or remove it " \
                  "from dataset.uri", msg
