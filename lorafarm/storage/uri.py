"""URIs (plain paths, ``file://``, ``s3://``) to fsspec filesystems.

S3 credentials and endpoint come from the standard AWS variables, ``AWS_ENDPOINT_URL``
included, so MinIO/Ceph work without extra flags.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import fsspec

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
CONNECT_TIMEOUT_S = 5
OTHER_SCHEMES = ("memory",)  # fsspec's in-process filesystem: tests only
READ_TIMEOUT_S = 30


def scheme_of(uri: str) -> str:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else "file"


def is_remote(uri: str) -> bool:
    return scheme_of(uri) != "file"


def normalize(uri: str) -> str:
    """Plain paths and ``file://`` become absolute local paths; others keep their scheme."""
    s = scheme_of(uri)
    if s == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return str(Path(os.path.expanduser(path)).resolve())
    return uri.rstrip("/")


def canonical(uri: str) -> tuple[str, str]:
    """(scheme, path) naming what ``uri`` reads, for prefix checks: every spelling of one object
    gives one pair. Local paths are absolute with ``..`` and symlinks resolved (``file://`` or
    plain); ``s3a://`` and any letter case of ``s3://`` are ``s3``; ``.``, ``..`` and repeated
    slashes in object keys are collapsed (conservative: a key that spells ``..`` literally is
    treated as the path it looks like)."""
    s = scheme_of(uri)
    if s == "file":  # FILE:// and File:// too (normalize strips only the lower-case spelling)
        return "file", normalize(uri.split("://", 1)[1] if _SCHEME.match(uri) else uri)
    rest = uri.split("://", 1)[1]
    if s == "s3a":
        s = "s3"
    path = posixpath.normpath("/" + rest).lstrip("/")
    return s, "" if path == "." else path


def is_under(uri: str, root: str) -> bool:
    """Whether ``uri`` names ``root`` or something below it, however either is spelled."""
    (s, path), (rs, rpath) = canonical(uri), canonical(root)
    return s == rs and (path == rpath or path.startswith(rpath.rstrip("/") + "/"))


def s3_options() -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict = {"client_kwargs": {}}
    if endpoint:
        opts["client_kwargs"]["endpoint_url"] = endpoint
    # botocore retries each request quickly (3 tries in all, at most ~3 s of backoff) and gives up
    # on a dead endpoint after connect_timeout; the store's write path adds slower, bounded
    # retries on top (lorafarm.storage.retry), so the layers together stay within about a minute.
    opts["config_kwargs"] = {
        "retries": {"total_max_attempts": 3, "mode": "standard"},
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    opts["skip_instance_cache"] = True
    return opts


def check_scheme(uri: str) -> str:
    """``uri`` when lorafarm reads and writes its scheme; else SpecError (exit 2) saying which do."""
    s = scheme_of(uri)
    if s not in ("file", "s3", "s3a", *OTHER_SCHEMES):
        from ..errors import SpecError

        raise SpecError([f"{uri}: {s}:// is not supported — use a plain path, file:// or s3:// (any S3-compatible "
                         "store: set AWS_ENDPOINT_URL for MinIO, Ceph or GCS's S3 interoperability endpoint)"])
    return uri


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for ``uri``."""
    s = scheme_of(uri)
    if s == "file":
        return fsspec.filesystem("file"), normalize(uri)
    if s in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **s3_options())
        return fs, uri.split("://", 1)[1].rstrip("/")
    check_scheme(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path



def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])
