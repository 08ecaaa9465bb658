"""Object-store faults against a real S3 API (moto's server on 127.0.0.1) that the tests stop
and start again on the same port: an outage mid-publish leaves no adapter and a clear error,
a short outage is ridden out by retries, and non-transient errors are not retried."""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
import uuid

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)

from lorafarm.errors import StorageError
from lorafarm.storage import (
    MANIFEST,
    publish_dir,
    read_bytes,
    read_manifest,
    store,
    with_retries,
    write_bytes,
)
from lorafarm.storage.retry import is_transient


class Endpoint:
    """A moto S3 server that can go down (connections refused) and come back on the same port.

    moto keeps its state in this process, so objects written before an outage are still there
    after it (as with a real store)."""

    def __init__(self):
        self.server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        starter = threading.Thread(target=server.start, daemon=True)  # start() waits forever if bind fails
        starter.start()
        starter.join(timeout)
        assert not starter.is_alive(), f"moto did not start on port {self.port} within {timeout} s"
        self.server, self.port = server, server.get_host_and_port()[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            # moto's stop() leaves the socket listening (clients would hang until their read
            # timeout); closing it makes the endpoint refuse connections, like a dead one
            self.server._server.server_close()
            self.server = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.url)


@pytest.fixture
def endpoint(monkeypatch):
    ep = Endpoint()
    ep.start()
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", ep.url)
    yield ep
    ep.stop()


@pytest.fixture
def bucket(endpoint):
    name = f"faults-{uuid.uuid4().hex[:8]}"
    endpoint.client().create_bucket(Bucket=name)
    return name


class RetryLog(logging.Handler):
    """The retry layer's warnings (one per failed attempt that is retried)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.first = threading.Event()

    def emit(self, record):
        self.messages.append(record.getMessage())
        self.first.set()


@pytest.fixture
def retry_log():
    handler = RetryLog()
    logger = logging.getLogger("lorafarm.storage.retry")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def adapter_dir(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (d / "tokenizer.json").write_text("{}")
    return d


def keys(endpoint: Endpoint, bucket: str, prefix: str) -> set[str]:
    listing = endpoint.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for o in listing.get("Contents", [])}


def test_outage_mid_publish_leaves_no_adapter_then_publishing_again_works(endpoint, bucket, tmp_path, monkeypatch,
                                                                          retry_log):
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "2")
    src = adapter_dir(tmp_path)
    uri = f"s3://{bucket}/t/job/adapter"
    uploads: list[str] = []
    real_filesystem = store.filesystem

    def endpoint_dies_after_first_upload(u):
        fs, path = real_filesystem(u)
        put_file = fs.put_file

        def put_then_maybe_die(lpath, rpath, *args, **kwargs):
            out = put_file(lpath, rpath, *args, **kwargs)
            uploads.append(rpath)
            if len(uploads) == 1:
                endpoint.stop()
            return out

        fs.put_file = put_then_maybe_die
        return fs, path

    monkeypatch.setattr(store, "filesystem", endpoint_dies_after_first_upload)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as failed:
        publish_dir(src, uri, {"job_id": "job"})
    took = time.monotonic() - t0
    msg = str(failed.value)
    assert f"{uri}/adapter_config.json" in msg and "2 attempt(s)" in msg, msg
    assert "EndpointConnectionError" in msg and "check the S3 endpoint/credentials" in msg, msg
    assert "the job can be resubmitted" in msg, msg
    assert took < 20, f"giving up took {took:.1f} s"
    assert len(uploads) == 1 and len(retry_log.messages) == 1, (uploads, retry_log.messages)
    monkeypatch.setattr(store, "filesystem", real_filesystem)

    # while the store is down, the adapter cannot be read — an outage, not "no adapter here"
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "1")
    with pytest.raises(StorageError, match="object store still failing after 1 attempt") as down:
        read_manifest(uri)
    assert f"{uri}/{MANIFEST}" in str(down.value) and "no adapter here" not in str(down.value)

    # back on the same port: the first file is there, the manifest is not, so there is no adapter
    endpoint.start()
    assert keys(endpoint, bucket, "t/job/adapter/") == {"adapter_config.json"}
    with pytest.raises(StorageError, match=f"no adapter here \\(no {MANIFEST}: missing, or publishing did not"):
        read_manifest(uri)

    # publishing again (the job resubmitted) completes, and readers verify it
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "2")
    written = publish_dir(src, uri, {"job_id": "job"})
    assert read_manifest(uri) == written
    assert set(written["files"]) == {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
    assert keys(endpoint, bucket, "t/job/adapter/") == {*written["files"], MANIFEST}


def test_a_short_outage_is_ridden_out_by_retries(endpoint, bucket, monkeypatch, retry_log):
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "5")
    uri = f"s3://{bucket}/t/job/spec.yaml"
    data = b"name: blip\n" * 100
    endpoint.stop()
    problems: list[BaseException] = []

    def come_back_after_a_failed_attempt():
        try:
            assert retry_log.first.wait(20), "no attempt failed while the endpoint was down"
            endpoint.start()
        except BaseException as e:  # reported by the test, not lost in the thread
            problems.append(e)

    restarter = threading.Thread(target=come_back_after_a_failed_attempt, daemon=True)
    restarter.start()
    t0 = time.monotonic()
    try:
        write_bytes(uri, data)
    finally:
        restarter.join(30)
    took = time.monotonic() - t0
    assert not problems and not restarter.is_alive(), problems
    assert endpoint.client().get_object(Bucket=bucket, Key="t/job/spec.yaml")["Body"].read() == data
    assert retry_log.messages and "attempt 1/5 failed" in retry_log.messages[0], retry_log.messages
    assert f"writing {uri}" in retry_log.messages[0] and "EndpointConnectionError" in retry_log.messages[0]
    assert took < 20, f"the write took {took:.1f} s"
    assert read_bytes(uri) == data


def test_non_transient_errors_are_not_retried(endpoint, bucket, monkeypatch, retry_log):
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "5")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"^s3://{bucket}/t/nothing: not found$"):
        read_bytes(f"s3://{bucket}/t/nothing")
    with pytest.raises(StorageError, match=f"no adapter here \\(no {MANIFEST}"):
        read_manifest(f"s3://{bucket}/t/job/adapter")
    with pytest.raises(FileNotFoundError):  # NoSuchBucket: a 404, raised as it is
        write_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", b"x")
    assert retry_log.messages == []  # one attempt each, no backoff
    assert time.monotonic() - t0 < 15  # retrying would have slept 1 + 2 + 4 + 8 s per operation


def test_retry_policy_backoff_and_limits(monkeypatch):
    delays: list[float] = []
    calls = []

    def down():
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k")

    monkeypatch.delenv("LORAFARM_STORAGE_RETRIES", raising=False)
    with pytest.raises(StorageError, match=r"^writing s3://b/k: object store still failing after 5 attempt") as e:
        with_retries(down, "writing s3://b/k", sleep=delays.append)
    assert len(calls) == 5 and delays == [1.0, 2.0, 4.0, 8.0] and isinstance(e.value.__cause__,
                                                                              EndpointConnectionError)
    calls.clear(), delays.clear()
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "50")  # many attempts: the backoff budget still bounds them
    with pytest.raises(StorageError):
        with_retries(down, "x", budget=30, sleep=delays.append)
    assert sum(delays) <= 30 and max(delays) == 8.0 and len(calls) == len(delays) + 1
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "zero")
    with pytest.raises(StorageError, match="LORAFARM_STORAGE_RETRIES='zero' is not a positive integer"):
        with_retries(lambda: 1, "x")
    monkeypatch.setenv("LORAFARM_STORAGE_RETRIES", "3")
    flaky = iter([ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("slow")])

    def recovers():
        err = next(flaky, None)
        if err:
            raise err
        return "ok"

    assert with_retries(recovers, "x", sleep=lambda s: None) == "ok"


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def wrapped(cause: BaseException, exc: BaseException) -> BaseException:
    exc.__cause__ = cause  # how s3fs translates botocore errors
    return exc


@pytest.mark.parametrize("exc,transient", [
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (ConnectionClosedError(endpoint_url="http://x"), True),
    (ReadTimeoutError(endpoint_url="http://x"), True),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
    (TimeoutError(), True),
    (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True),
    (wrapped(client_error("ServiceUnavailable", 503), OSError(errno.EIO, "Service Unavailable")), True),
    (OSError(errno.EREMOTEIO, "We encountered an internal error"), True),
    (client_error("NoSuchKey", 404), False),
    (client_error("AccessDenied", 403), False),
    (wrapped(client_error("InvalidArgument", 400), OSError(errno.EINVAL, "bad")), False),
    (wrapped(client_error("AccessDenied", 403), PermissionError("Access Denied")), False),
    (FileNotFoundError("k"), False),
    (StorageError("upload check failed"), False),
    (wrapped(EndpointConnectionError(endpoint_url="http://x"), StorageError("gave up")), False),
    (SSLError(endpoint_url="https://x", error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), False),
    (SSLError(endpoint_url="https://x", error="EOF occurred in violation of protocol"), True),
    (ValueError("x"), False),
])
def test_which_errors_are_transient(exc, transient):
    assert is_transient(exc) is transient
