"""Local output directories (``merge OUTDIR``, ``pull SOURCE DEST``, ``models export NAME DIR``):
checked before anything is written, written atomically, with normal file modes.

- A file where a directory is meant, a remote URI, or a parent that cannot be created is refused.
- An existing non-empty directory is refused unless ``force`` (then it is replaced whole:
  never a mix of old and new files, e.g. a merged model beside an adapter's files).
- Everything is written into a temp directory beside the destination, which is renamed onto it
  when complete; a failure half-way leaves the destination as it was (and removes the parents
  it created).
- Files get ``0666 & ~umask`` and directories ``0777 & ~umask`` (0644/0755 under the usual
  umask), whatever the libraries that wrote them chose.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import SpecError
from .uri import is_remote

_TMP, _OLD = ".lorafarm-tmp-", ".lorafarm-old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def check_output_dir(dest: str | Path, force: bool = False, what: str = "DEST") -> Path:
    """The absolute destination, or SpecError (exit 2) naming ``what`` and ``dest`` and the fix.
    Nothing is written."""
    text = str(dest)
    if is_remote(text) and not text.startswith("file://"):
        raise SpecError([f"{what} {text}: must be a local directory — give a local path (pull from s3:// "
                         "URIs, write to local directories)"])
    out = Path(os.path.expanduser(text.removeprefix("file://"))).resolve()
    if out.exists() and not out.is_dir():
        raise SpecError([f"{what} {text}: is a file, not a directory — give a new or empty directory "
                         "(or remove the file)"])
    if out.is_dir():
        try:
            names = _entries(out)
        except OSError as e:
            raise SpecError([f"{what} {text}: cannot list it ({e.strerror or e}) — give a directory you can "
                             "write"]) from None
        if names and not force:
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} entries)" if len(names) > 3 else "")
            raise SpecError([f"{what} {text}: directory is not empty ({shown}) — give a new or empty "
                             "directory, or pass --force to replace it"])
        cwd = Path.cwd().resolve()
        if names and (cwd == out or out in cwd.parents or out == Path.home().resolve() or out == out.parent):
            raise SpecError([f"{what} {text}: refusing to replace it with --force (it holds the current or "
                             "home directory) — give a new directory"])
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpecError([f"{what} {text}: cannot create it ({ancestor} is a file) — give a path under a "
                         "directory"])
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SpecError([f"{what} {text}: cannot create it ({ancestor} is not writable) — give a directory "
                         "you can write"])
    return out


def normal_modes(root: Path) -> None:
    """``0666 & ~umask`` for files and ``0777 & ~umask`` for directories under ``root`` (itself included)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


@contextlib.contextmanager
def output_dir(dest: str | Path, force: bool = False, what: str = "DEST") -> Iterator[Path]:
    """``with output_dir(dest) as tmp: write into tmp`` — on success ``tmp`` becomes ``dest``
    (checked first with :func:`check_output_dir`); on any error ``dest`` is left as it was."""
    out = check_output_dir(dest, force, what)
    created: list[Path] = []
    p = out.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}{_TMP}{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        yield tmp
        normal_modes(tmp)
        _install(tmp, out, force, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _install(tmp: Path, out: Path, force: bool, what: str) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    check_output_dir(out, force, what)  # it may have filled up while we wrote
    if not _entries(out):
        os.rename(tmp, out)  # replaces an empty directory
        return
    old = out.parent / f".{out.name}{_OLD}{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
