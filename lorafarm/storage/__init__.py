"""Object storage: URIs to filesystems, the store layout, atomic publishing."""

from .outdir import check_output_dir, output_dir
from .retry import is_transient, with_retries
from .store import (
    MANIFEST,
    Store,
    check_name,
    default_store,
    download_dir,
    exists,
    new_job_id,
    publish_dir,
    read_bytes,
    read_manifest,
    sha256_file,
    write_bytes,
    write_local,
)
from .uri import (
    canonical,
    check_scheme,
    filesystem,
    is_remote,
    is_under,
    join,
    normalize,
    s3_options,
    scheme_of,
)

__all__ = [
    "MANIFEST",
    "Store",
    "canonical",
    "check_output_dir",
    "check_scheme",
    "check_name",
    "default_store",
    "download_dir",
    "exists",
    "filesystem",
    "is_remote",
    "is_under",
    "is_transient",
    "join",
    "new_job_id",
    "normalize",
    "output_dir",
    "publish_dir",
    "read_bytes",
    "read_manifest",
    "s3_options",
    "scheme_of",
    "sha256_file",
    "with_retries",
    "write_bytes",
    "write_local",
]
