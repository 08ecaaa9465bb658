"""Where a job's resumable checkpoints live in the store, and how a complete one is recognised.

``<store>/<tenant>/<job-id>/checkpoints/step-N/`` holds what a LoRA job's state really is —
never the frozen base (:mod:`lorafarm.worker.zero_state` writes and reads the tensors):

- ``weights.safetensors``: every trainable (LoRA) parameter, full and fp32 (ZeRO's master copy);
- ``optimizer.safetensors``: AdamW's ``exp_avg`` / ``exp_avg_sq`` per parameter, full, fp32;
- ``rng-rank-K.pt``: the torch RNG states (CPU and accelerator) of rank K (dropout masks do not
  depend on them: :mod:`lorafarm.worker.dropout`);
- ``state.json``: step (the data cursor: the next global batch is step ``N``, i.e. sample
  ``N × global_batch_size`` of the seeded order), optimizer step count, LR-schedule state, the
  history so far, the resume digest of the spec and the base weights' digest;
- ``checkpoint.json``: the marker, written last, with every file's size and sha256 (the RNG
  files included). A directory
  without it does not exist for readers (a save cut short leaves only garbage, pruned later).

No torch here: the scheduler and the CLI list checkpoints without loading it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import StorageError
from ..storage import exists, filesystem, join, read_bytes, write_bytes

FORMAT = "lorafarm.checkpoint/v1"
MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointRef:
    """A complete checkpoint: its directory, step and marker."""

    uri: str
    step: int
    marker: dict[str, Any]


def checkpoints_uri(job_uri: str) -> str:
    return join(job_uri, "checkpoints")


def step_uri(job_uri: str, step: int) -> str:
    return join(checkpoints_uri(job_uri), f"step-{step}")


def rng_file(rank: int) -> str:
    return f"rng-rank-{rank}.pt"


def _step_dirs(job_uri: str) -> list[tuple[int, str, str]]:
    """(step, name, path in its filesystem) of every ``step-N`` directory, complete or not."""
    fs, root = filesystem(checkpoints_uri(job_uri))
    try:
        paths = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for path in paths:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        m = STEP_DIR.match(name)
        if m:
            out.append((int(m.group(1)), name, path.rstrip("/")))
    return out


def list_checkpoints(job_uri: str) -> list[CheckpointRef]:
    """Complete checkpoints of a job (marker present), oldest first."""
    out = []
    for step, name, _ in _step_dirs(job_uri):
        uri = join(checkpoints_uri(job_uri), name)
        if not exists(join(uri, MARKER)):
            continue  # being written, or cut short (an unreachable store raises instead: never "no checkpoint")
        try:
            marker = json.loads(read_bytes(join(uri, MARKER)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if marker.get("format") == FORMAT:
            out.append(CheckpointRef(uri=uri, step=step, marker=marker))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(job_uri: str) -> CheckpointRef | None:
    found = list_checkpoints(job_uri)
    return found[-1] if found else None


def prune(job_uri: str, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and incomplete directories
    older than the newest complete one. The marker goes first, so a half-deleted directory is
    never mistaken for a checkpoint."""
    complete = list_checkpoints(job_uri)
    if not complete:
        return []
    newest = complete[-1].step
    keep = {c.step for c in complete[-keep_last:]}
    fs, _ = filesystem(checkpoints_uri(job_uri))
    removed = []
    for step, name, path in _step_dirs(job_uri):
        if step in keep or step > newest:
            continue
        try:
            if fs.exists(f"{path}/{MARKER}"):
                fs.rm(f"{path}/{MARKER}")
            fs.rm(path, recursive=True)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def write_marker(uri: str, *, step: int, world: int, files: dict[str, bytes], resume_digest: str | None,
                 save_seconds: float) -> dict[str, Any]:
    """Make the checkpoint at ``uri`` exist: after ``files`` and every rank's RNG file are
    written, the marker with the sizes and sha256s of them all (the RNG files read back from
    the store, as the other ranks wrote them)."""
    files = dict(files)
    for r in range(world):
        if not exists(join(uri, rng_file(r))):
            raise StorageError(f"{uri}: {rng_file(r)} missing after the save — the store lost a write")
        files[rng_file(r)] = read_bytes(join(uri, rng_file(r)))
    marker = {
        "format": FORMAT,
        "step": step,
        "world_size": world,
        "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
        "rng_files": [rng_file(r) for r in range(world)],
        "bytes": sum(len(d) for d in files.values()),
        "resume_digest": resume_digest,
        "created_at": time.time(),
        "save_seconds": save_seconds,
    }
    write_bytes(join(uri, MARKER), json.dumps(marker, indent=2, sort_keys=True).encode())
    return marker


def read_checkpoint(ref: CheckpointRef) -> dict[str, bytes]:
    """The checkpoint's files, each checked against the marker's size and sha256 (every
    rank's RNG file too: a corrupt one makes the whole checkpoint corrupt)."""
    blobs = {}
    for name, meta in ref.marker["files"].items():
        data = read_bytes(join(ref.uri, name))
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise StorageError(f"{ref.uri}/{name}: does not match its checkpoint marker — the checkpoint is corrupt")
        blobs[name] = data
    return blobs


def read_rng(ref: CheckpointRef, rank: int, blobs: dict[str, bytes] | None = None) -> bytes:
    """Rank ``rank``'s RNG file: from ``blobs`` (:func:`read_checkpoint`'s, verified) when the
    marker lists it, else read as is (checkpoints made before the marker covered RNG files)."""
    if blobs is not None and rng_file(rank) in blobs:
        return blobs[rng_file(rank)]
    return read_bytes(join(ref.uri, rng_file(rank)))
