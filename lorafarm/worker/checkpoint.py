"""Resumable LoRA checkpoints in the store, independent of the worker count and ZeRO stage.

``<store>/<tenant>/<job-id>/checkpoints/step-N/`` holds what a LoRA job's state really is —
never the frozen base:

- ``weights.safetensors``: every trainable (LoRA) parameter, full and fp32 (ZeRO's master copy);
- ``optimizer.safetensors``: AdamW's ``exp_avg`` / ``exp_avg_sq`` per parameter, full, fp32;
- ``rng-rank-K.pt``: the torch RNG states (CPU and accelerator) of rank K;
- ``state.json``: step (the data cursor: the next global batch is step ``N``, i.e. sample
  ``N × global_batch_size`` of the seeded order), optimizer step count, LR-schedule state, the
  history so far, the resume digest of the spec and the base weights' digest;
- ``checkpoint.json``: the marker, written last, with every file's size and sha256. A directory
  without it does not exist for readers (a save cut short leaves only garbage, pruned later).

The state is saved whole, not per ZeRO partition (DeepSpeed's tensor-fragment API gathers and
scatters it), so a checkpoint made by 2 workers under ZeRO-3 resumes on 1 worker under ZeRO-2.
Saving and loading are collective: every rank calls them at the same step.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import StorageError
from ..storage import exists, filesystem, join, read_bytes, write_bytes

FORMAT = "lorafarm.checkpoint/v1"
MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    step: int
    marker: dict[str, Any]


def checkpoints_uri(job_uri: str) -> str:
    return join(job_uri, "checkpoints")


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


# ---------------------------------------------------------------- tensors <-> ZeRO


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _opt_state(engine, param) -> dict[str, torch.Tensor] | None:
    """AdamW's state for ``param`` when the optimizer holds it unpartitioned (no ZeRO)."""
    from ..zero import base_optimizer

    return base_optimizer(engine).state.get(param)


def gather_training_state(engine, model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Full fp32 weights and Adam moments of every trainable parameter, on every rank
    (collective under ZeRO), and the optimizer's step count."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from ..zero import base_optimizer

    weights, moments = {}, {}
    for name, p in _trainable(model):
        full = safe_get_full_fp32_param(p)
        weights[name] = (full if full is not None else p.detach()).float().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            value = safe_get_full_optimizer_state(p, key)
            if value is None:
                state = _opt_state(engine, p) or {}
                value = state.get(key, torch.zeros_like(p, dtype=torch.float32))
            moments[f"{name}::{key}"] = value.detach().float().cpu().clone().reshape(weights[name].shape)
    steps = [float(s["step"]) for s in base_optimizer(engine).state.values() if "step" in s]
    return weights, moments, int(max(steps)) if steps else 0


def _init_adam_state(engine) -> None:
    """Create AdamW's lazily made state (as its first ``step()`` would) so it can be set."""
    from ..zero import base_optimizer

    opt = base_optimizer(engine)
    # ZeRO-3 hands AdamW one flat fp32 partition at a time; between steps its groups are empty
    params = [p for group in opt.param_groups for p in group["params"]]
    params += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    for p in params:
        if p not in opt.state or "exp_avg" not in opt.state[p]:
            opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 and DeepSpeed's bf16 optimizer map fragments once the state exists
        link()


def scatter_training_state(
    engine, model, weights: dict[str, torch.Tensor], moments: dict[str, torch.Tensor], step: int
) -> None:
    """Set weights (working and fp32 master copies) and Adam moments from full tensors, under
    any ZeRO stage and worker count (collective under ZeRO-3)."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    from ..zero import base_optimizer

    _init_adam_state(engine)
    params = _trainable(model)
    missing = [n for n, _ in params if n not in weights]
    if missing:
        raise StorageError(
            f"checkpoint lacks {len(missing)} trainable tensors (first: {missing[0]}) — it was made "
            "for other LoRA settings"
        )
    for name, p in params:
        value = weights[name]
        if hasattr(p, "ds_id"):  # ZeRO-3: the working copy is partitioned
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if engine.global_rank == 0:
                    p.data.copy_(value.to(p.device, p.dtype))
        else:
            with torch.no_grad():
                p.data.copy_(value.to(p.device, p.dtype))
        safe_set_full_fp32_param(p, value.to(engine.device))
        for key in ("exp_avg", "exp_avg_sq"):
            m = moments[f"{name}::{key}"].to(engine.device)
            if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
                safe_set_full_optimizer_state(p, m, key)
            else:
                state = _opt_state(engine, p)
                state[key].copy_(m.to(state[key].dtype))
    for state in base_optimizer(engine).state.values():
        state["step"] = torch.tensor(float(step))


# ---------------------------------------------------------------- save / load


def _save_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def _rng_blob() -> bytes:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _set_rng(blob: bytes) -> None:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    job_uri: str, step: int, engine, model, scheduler, rank: int, world: int, extra: dict[str, Any], barrier
) -> dict[str, Any] | None:
    """Collective. Every rank writes its RNG file; rank 0 writes the tensors and state, then —
    after all ranks are done — the marker. Returns the marker on rank 0."""
    t0 = time.perf_counter()
    weights, moments, opt_step = gather_training_state(engine, model)
    uri = join(checkpoints_uri(job_uri), f"step-{step}")
    write_bytes(join(uri, f"rng-rank-{rank}.pt"), _rng_blob())
    files: dict[str, bytes] = {}
    if rank == 0:
        state = {
            "format": FORMAT,
            "step": step,
            "optimizer_step": opt_step,
            "world_size": world,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            **extra,
        }
        files = {
            "weights.safetensors": _save_tensors(weights),
            "optimizer.safetensors": _save_tensors(moments),
            "state.json": json.dumps(state, sort_keys=True).encode(),
        }
        for name, data in files.items():
            write_bytes(join(uri, name), data)
    barrier()  # every rank's RNG file is written
    if rank != 0:
        return None
    for r in range(world):
        if not exists(join(uri, f"rng-rank-{r}.pt")):
            raise StorageError(f"{uri}: rng-rank-{r}.pt missing after the save — the store lost a write")
    marker = {
        "format": FORMAT,
        "step": step,
        "world_size": world,
        "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
        "rng_files": [f"rng-rank-{r}.pt" for r in range(world)],
        "bytes": sum(len(d) for d in files.values()),
        "resume_digest": extra.get("resume_digest"),
        "created_at": time.time(),
    }
    marker["save_seconds"] = time.perf_counter() - t0
    write_bytes(join(uri, MARKER), json.dumps(marker, indent=2, sort_keys=True).encode())
    return marker


@dataclass
class Restored:
    step: int
    state: dict[str, Any]
    same_world: bool


def read_checkpoint(ref: CheckpointRef) -> dict[str, bytes]:
    """The checkpoint's files, each checked against the marker's size and sha256 (no collectives)."""
    blobs = {}
    for name, meta in ref.marker["files"].items():
        data = read_bytes(join(ref.uri, name))
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise StorageError(f"{ref.uri}/{name}: does not match its checkpoint marker — the checkpoint is corrupt")
        blobs[name] = data
    return blobs


def load_checkpoint(
    ref: CheckpointRef, blobs: dict[str, bytes], engine, model, scheduler, rank: int, world: int
) -> Restored:
    """Collective. Restores weights, optimizer and LR schedule from :func:`read_checkpoint`'s
    files; RNG states too when the worker count is the one that saved it (other worker counts
    draw fresh per-rank streams: only dropout uses them)."""
    state = json.loads(blobs["state.json"])
    scatter_training_state(
        engine,
        model,
        _load_tensors(blobs["weights.safetensors"]),
        _load_tensors(blobs["optimizer.safetensors"]),
        state["optimizer_step"],
    )
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
    engine.global_steps = state["optimizer_step"]
    same_world = int(state["world_size"]) == world
    if same_world:
        _set_rng(read_bytes(join(ref.uri, f"rng-rank-{rank}.pt")))
    return Restored(step=int(state["step"]), state=state, same_world=same_world)
