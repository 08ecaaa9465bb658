"""The object-store layout and atomic publishing.

``<root>/<tenant>/<job-id>/{spec.yaml, adapter/, checkpoints/}``. Readers treat an adapter
as existing only when its manifest ``lorafarm.json`` exists and every file it lists matches
its sha256, so writing files first and the manifest last is atomic for readers.

On object stores, writes, reads and publishing retry transient failures (an endpoint down for
a while, 5xx, SlowDown) with bounded backoff (``retry.with_retries``); when they run out, a
StorageError names the URI. An outage mid-publish therefore leaves no manifest, hence no adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from .retry import with_retries
from .uri import check_scheme, filesystem, is_remote, join, normalize

if TYPE_CHECKING:
    from ..spec import JobSpec

MANIFEST = "lorafarm.json"
SPEC_FILE = "spec.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
DEFAULT_STORE_ENV = "LORAFARM_STORE"


def default_store() -> str:
    """``$LORAFARM_STORE``, else ``$XDG_DATA_HOME/lorafarm/store`` (``~/.local/share/lorafarm/store``)."""
    env = os.environ.get(DEFAULT_STORE_ENV)
    if env:
        return normalize(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return str(Path(base) / "lorafarm" / "store")


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value or ""):
        raise StorageError(
            f"{kind} {value!r} is not a valid name — use lowercase letters, digits and '-' (no '/', no '..')"
        )
    return value


def new_job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def sha256_file(fs, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class Store:
    """A store root (local directory or ``s3://bucket/prefix``)."""

    root: str

    @classmethod
    def open(cls, uri: str | None = None) -> Store:
        return cls(normalize(check_scheme(uri or default_store())))

    def job_uri(self, tenant: str, job_id: str) -> str:
        return join(self.root, check_name("tenant", tenant), check_name("job id", job_id))

    def adapter_uri(self, tenant: str, job_id: str) -> str:
        return join(self.job_uri(tenant, job_id), "adapter")

    def write_spec(self, tenant: str, job_id: str, spec: JobSpec) -> str:
        """``<job>/spec.yaml``: the validated spec as the job ran it (one writer: runs and submits alike)."""
        from ..spec import dump_yaml

        uri = join(self.job_uri(tenant, job_id), SPEC_FILE)
        write_bytes(uri, dump_yaml(spec).encode())
        return uri

    def cache_uri(self, tenant: str, *parts: str) -> str:
        return join(self.root, check_name("tenant", tenant), "_cache", *parts)

    def find_job(self, job_id: str, tenant: str | None = None) -> str:
        """The job directory of ``job_id`` (searching tenants when none is given)."""
        check_name("job id", job_id)
        fs, root = filesystem(self.root)
        tenants = [tenant] if tenant else [p.rsplit("/", 1)[-1] for p in _ls_dirs(fs, root)]
        for t in tenants:
            if fs.exists(f"{root}/{t}/{job_id}"):
                return self.job_uri(t, job_id)
        raise StorageError(f"job {job_id!r} not found in store {self.root} — check the id with `lorafarm list`")


def _ls_dirs(fs, path: str) -> list[str]:
    try:
        return [e["name"] for e in fs.ls(path, detail=True) if e["type"] == "directory"]
    except FileNotFoundError:
        return []


def _remote(uri: str, what: str, fn):
    """``fn()``, with retries of transient failures when ``uri`` is on an object store."""
    return with_retries(fn, f"{what} {uri}") if is_remote(uri) else fn()


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object (one PUT, retried on transient failures); local files go through a
    temp file + rename (atomic)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        _remote(uri, "writing", lambda: fs.pipe_file(path, data))
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_local(path, data)


def write_local(path: str, data: bytes) -> None:
    """Write a local file atomically and durably: a temp file beside it, fsync, rename (its
    directory must exist)."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # as open(): the umask applies; unbuffered
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(uri: str) -> bytes:
    """The bytes of ``uri``; FileNotFoundError when it does not exist."""
    fs, path = filesystem(uri)

    def read() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    return _remote(uri, "reading", read)


def read_bytes(uri: str) -> bytes:
    try:
        return _read(uri)
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found") from None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return _remote(uri, "looking up", lambda: fs.exists(path))


def publish_dir(local_dir: str | Path, dest_uri: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Upload every file of ``local_dir``, check each against its local sha256, then write the
    manifest (with ``files: {name: {sha256, size}}``) last. Returns the manifest written."""
    fs, dest = filesystem(dest_uri)
    local = Path(local_dir)
    files: dict[str, dict[str, Any]] = {}
    _remote(dest_uri, "preparing", lambda: fs.makedirs(dest, exist_ok=True))
    for f in sorted(p for p in local.iterdir() if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        target, file_uri = f"{dest}/{f.name}", join(dest_uri, f.name)
        _remote(file_uri, "uploading", lambda f=f, target=target: fs.put_file(str(f), target))
        remote_digest, size = _remote(file_uri, "checking the upload of",
                                      lambda target=target: sha256_file(fs, target))
        if remote_digest != digest:
            raise StorageError(f"{dest_uri}/{f.name}: upload check failed (sha256 differs) — retry the job")
        files[f.name] = {"sha256": digest, "size": size}
    manifest = {**manifest, "files": files}
    # last: until the manifest exists, readers see no adapter (an outage before here leaves none)
    write_bytes(join(dest_uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read_manifest(adapter_uri: str, verify: bool = True) -> dict[str, Any]:
    """The manifest of a published adapter; with ``verify`` every file's sha256 is checked.
    An adapter without a manifest, or whose files do not match it, does not exist."""
    uri = normalize(check_scheme(adapter_uri))
    try:
        manifest = json.loads(_read(join(uri, MANIFEST)))
    except FileNotFoundError:
        raise StorageError(
            f"{adapter_uri}: no adapter here (no {MANIFEST}: missing, or publishing did not finish) — "
            "check the URI or the job's state"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StorageError(f"{adapter_uri}/{MANIFEST}: corrupt manifest — re-publish the adapter") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(m, dict) and isinstance(m.get("sha256"), str) and isinstance(m.get("size"), int)
        for m in files.values()
    ):
        raise StorageError(
            f"{adapter_uri}/{MANIFEST}: corrupt manifest (no sha256 and size for every file) — re-publish the adapter"
        )
    if verify:
        fs, path = filesystem(uri)
        problems = []
        for name, meta in files.items():
            try:
                digest, size = _remote(join(uri, name), "checking",
                                       lambda name=name: sha256_file(fs, f"{path}/{name}"))
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            if digest != meta["sha256"] or size != meta["size"]:
                problems.append(f"{name}: sha256/size differ from the manifest")
        if problems:
            raise StorageError(f"{adapter_uri}: incomplete or corrupt adapter ({'; '.join(problems)}) — refusing it")
    return manifest


def download_dir(src_uri: str, dest: str | Path, names: list[str]) -> Path:
    fs, src = filesystem(src_uri)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        _remote(join(src_uri, name), "downloading",
                lambda name=name: fs.get_file(f"{src}/{name}", str(out / name)))
    return out
