"""Data on object stores: files named by their full URI, a storage outage mid-read retried rather
than called corrupt, corrupt and truncated Parquet on S3."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from data_helpers import (
    fails_fast,
    multi_group_parquet,
    overwrite,
    spec_for,
)

from lorafarm.data import (
    read_examples,
)


@pytest.fixture
def memory_uri(tmp_path):
    """A directory on fsspec's in-memory filesystem, which lorafarm treats as an object store."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_object_store_files_are_named_by_full_uri(memory_uri, tmp_path):
    fs, root = memory_uri
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    fs.pipe_file(f"{root}/d.parquet", f.read_bytes())
    fs.pipe_file(f"{root}/e.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xe9"}\n')
    for name, expected in [("d.parquet", "row group 1 of 3 (rows 10-19) is corrupt ("),
                           ("e.jsonl", "not UTF-8 text at row 3 ")]:
        uri = f"memory://{root}/{name}"
        msg = fails_fast(lambda u=uri: read_examples(u, spec_for(u, on_bad_rows="skip")))
        assert msg.startswith(f"memory://{root}/{name}: {expected}"), msg


def test_a_storage_outage_mid_read_is_retried_not_called_corrupt(memory_uri, tmp_path, monkeypatch):
    import lorafarm.storage.retry as retry
    from lorafarm.errors import StorageError

    fs, root = memory_uri
    fs.pipe_file(f"{root}/d.parquet", multi_group_parquet(tmp_path / "d.parquet").read_bytes())
    uri = f"memory://{root}/d.parquet"
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.01)
    real = pq.ParquetFile.read_row_group
    failures = {"left": 1}

    def flaky(self, i, *a, **kw):
        if i == 1 and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(self, i, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", flaky)
    table, _ = read_examples(uri, spec_for(uri))  # one reset: retried, every row read
    assert len(table) == 30 and not failures["left"]
    failures["left"] = 99  # an outage that outlasts the retries: a StorageError, not a "corrupt" DataError
    monkeypatch.setenv(retry.RETRIES_ENV, "2")
    with pytest.raises(StorageError, match=rf"reading row group 1 of {uri}: object store still failing after 2"):
        read_examples(uri, spec_for(uri))


@pytest.mark.integration
def test_corrupt_and_truncated_parquet_on_s3(s3_server, s3_bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    f = multi_group_parquet(tmp_path / "d.parquet")
    good = f.read_bytes()
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    s3.put_object(Bucket=s3_bucket, Key="ds/corrupt.parquet", Body=f.read_bytes())
    s3.put_object(Bucket=s3_bucket, Key="ds/cut.parquet", Body=good[: len(good) // 2])
    for key, expected in [("corrupt.parquet", "row group 1 of 3 (rows 10-19) is corrupt ("),
                          ("cut.parquet", "not a readable Parquet file (")]:
        uri = f"s3://{s3_bucket}/ds/{key}"
        msg = fails_fast(lambda u=uri: read_examples(u, spec_for(u, on_bad_rows="skip")), seconds=20)
        assert msg.startswith(f"{uri}: {expected}"), msg
