"""A rank's training state in and out of DeepSpeed ZeRO, for checkpoints.

The state is saved whole, not per ZeRO partition (DeepSpeed's tensor-fragment API gathers and
scatters it), so a checkpoint made by 2 workers under ZeRO-3 resumes on 1 worker under ZeRO-2.
Saving and loading are collective: every rank calls them at the same step. The files and the
marker are :mod:`lorafarm.worker.checkpoints`' layout.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import StorageError
from ..storage import join, write_bytes
from ..zero import base_optimizer
from .checkpoints import FORMAT, CheckpointRef, read_rng, rng_file, step_uri, write_marker

WEIGHTS, OPTIMIZER, STATE = "weights.safetensors", "optimizer.safetensors", "state.json"


@dataclass(frozen=True)
class RankContext:
    """What one rank saves from and restores into: its engine, the PEFT model, the LR schedule."""

    engine: Any
    model: Any
    lr_schedule: Any  # a torch LR scheduler, or None
    rank: int
    world: int
    barrier: Callable[[], None]


@dataclass
class Restored:
    step: int
    state: dict[str, Any]
    same_world: bool


def save_checkpoint(job_uri: str, step: int, ctx: RankContext, extra: dict[str, Any]) -> dict[str, Any] | None:
    """Collective. Every rank writes its RNG file; rank 0 writes the tensors and state, then —
    after all ranks are done — the marker. Returns the marker on rank 0."""
    t0 = time.perf_counter()
    weights, moments, opt_step = gather_training_state(ctx.engine, ctx.model)
    scheduler = ctx.lr_schedule.state_dict() if ctx.lr_schedule is not None else None
    return write_checkpoint(job_uri, step, ctx, weights, moments, opt_step, scheduler, extra, t0)


def write_checkpoint(job_uri: str, step: int, ctx: RankContext, weights: dict[str, torch.Tensor],
                     moments: dict[str, torch.Tensor], opt_step: int, scheduler: dict[str, Any] | None,
                     extra: dict[str, Any], t0: float) -> dict[str, Any] | None:
    """Collective: the files of a checkpoint from gathered state (a co-training pack writes each
    member's own this way, in the layout a job alone resumes from)."""
    uri = step_uri(job_uri, step)
    write_bytes(join(uri, rng_file(ctx.rank)), _rng_blob())
    files: dict[str, bytes] = {}
    if ctx.rank == 0:
        state = {
            "format": FORMAT,
            "step": step,
            "optimizer_step": opt_step,
            "world_size": ctx.world,
            "scheduler": scheduler,
            **extra,
        }
        files = {
            WEIGHTS: save_tensors(weights),
            OPTIMIZER: save_tensors(moments),
            STATE: json.dumps(state, sort_keys=True).encode(),
        }
        for name, data in files.items():
            write_bytes(join(uri, name), data)
    ctx.barrier()  # every rank's RNG file is written
    if ctx.rank != 0:
        return None
    return write_marker(uri, step=step, world=ctx.world, files=files, resume_digest=extra.get("resume_digest"),
                        save_seconds=time.perf_counter() - t0)


def load_checkpoint(ref: CheckpointRef, blobs: dict[str, bytes], ctx: RankContext) -> Restored:
    """Collective. Restores weights, optimizer and LR schedule from
    :func:`~lorafarm.worker.checkpoints.read_checkpoint`'s files; RNG states too when the worker
    count is the one that saved it. Training draws nothing from them (dropout masks are seeded
    per row: :mod:`lorafarm.worker.dropout`), so another worker count resumes exactly too."""
    state = json.loads(blobs[STATE])
    scatter_training_state(ctx.engine, ctx.model, load_tensors(blobs[WEIGHTS]), load_tensors(blobs[OPTIMIZER]),
                           state["optimizer_step"])
    schedule = ctx.lr_schedule
    if schedule is not None and state.get("scheduler") is not None:
        schedule.load_state_dict(state["scheduler"])
        for group, lr in zip(schedule.optimizer.param_groups, schedule.get_last_lr(), strict=True):
            group["lr"] = lr
    ctx.engine.global_steps = state["optimizer_step"]
    same_world = int(state["world_size"]) == ctx.world
    if same_world:
        _set_rng(read_rng(ref, ctx.rank, blobs))
    return Restored(step=int(state["step"]), state=state, same_world=same_world)


# ---------------------------------------------------------------- tensors <-> ZeRO


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _opt_state(engine, param) -> dict[str, torch.Tensor] | None:
    """AdamW's state for ``param`` when the optimizer holds it unpartitioned (no ZeRO)."""
    return base_optimizer(engine).state.get(param)


def gather_training_state(engine, model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Full fp32 weights and Adam moments of every trainable parameter, on every rank
    (collective under ZeRO), and the optimizer's step count."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

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


# ---------------------------------------------------------------- bytes


def save_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def load_tensors(data: bytes) -> dict[str, torch.Tensor]:
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
