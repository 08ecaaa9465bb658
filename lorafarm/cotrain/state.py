"""A pack member's checkpoint: its own adapter, Adam moments, step count and LR schedule, in the
layout of a job alone (:mod:`lorafarm.worker.zero_state`), so a preempted member resumes alone
through :class:`~lorafarm.worker.recipe.LoraRecipe` or in another pack through
:class:`~lorafarm.cotrain.pack.PackRecipe`, exactly.

Inside a pack the member's factors are named with its adapter name (``…q_proj.lora_A.m1.weight``);
a job alone names them ``…lora_A.default.weight``. The checkpoint holds the alone names; the pack
renames on the way in and out. The schedule is saved as the ``LambdaLR`` a job alone steps once per
optimizer step (the pack sets each member's learning rate itself)."""

from __future__ import annotations

from typing import Any

import torch

from ..zero import base_optimizer
from .routing import member_parameters


def _alone(name: str, member: str) -> str:
    return name.replace(f".{member}.", ".default.")


def _named(model, member: str) -> list[tuple[str, torch.nn.Parameter]]:
    mine = {id(p) for p in member_parameters(model, member)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in mine]


def _relink(engine) -> None:
    """Map ZeRO-1/2's per-parameter optimizer-state fragments again. DeepSpeed links them once,
    after the first group's first ``step()`` — when the other groups' Adam state does not exist
    yet — so with one param group per member, every member but the first would have none."""
    outer = engine.optimizer
    if hasattr(outer, "_hp_optimizer_states_linked") and hasattr(outer, "_lazy_init_hp_params_optimizer_state"):
        outer._hp_optimizer_states_linked = False
        outer._lazy_init_hp_params_optimizer_state()


def member_training_state(engine, model, member: str, group: int) -> tuple[dict, dict, int]:
    """Full fp32 weights and Adam moments of the member's factors under their alone names, and
    its optimizer step count (collective under ZeRO: every rank calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _relink(engine)
    opt = base_optimizer(engine)
    weights, moments = {}, {}
    for name, p in _named(model, member):
        key = _alone(name, member)
        full = safe_get_full_fp32_param(p)
        weights[key] = (full if full is not None else p.detach()).float().cpu().clone()
        for moment in ("exp_avg", "exp_avg_sq"):
            value = safe_get_full_optimizer_state(p, moment)
            if value is None:
                value = (opt.state.get(p) or {}).get(moment, torch.zeros_like(p, dtype=torch.float32))
            moments[f"{key}::{moment}"] = value.detach().float().cpu().clone().reshape(weights[key].shape)
    steps = [float(opt.state[p]["step"]) for p in opt.param_groups[group]["params"]
             if p in opt.state and "step" in opt.state[p]]
    return weights, moments, int(max(steps)) if steps else 0


def load_member_state(engine, model, member: str, group: int, weights: dict[str, torch.Tensor],
                      moments: dict[str, torch.Tensor], step: int) -> None:
    """Set the member's factors (working and fp32 master copies), Adam moments and step count
    from a checkpoint's full tensors (alone names)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    from ..errors import StorageError
    from ..worker.zero_state import _init_adam_state

    _init_adam_state(engine)
    _relink(engine)
    opt = base_optimizer(engine)
    named = _named(model, member)
    missing = [_alone(n, member) for n, _ in named if _alone(n, member) not in weights]
    if missing:
        raise StorageError(f"checkpoint lacks {len(missing)} trainable tensors (first: {missing[0]}) — it was made "
                           "for other LoRA settings")
    for name, p in named:
        key = _alone(name, member)
        with torch.no_grad():
            p.data.copy_(weights[key].to(p.device, p.dtype))
        safe_set_full_fp32_param(p, weights[key].to(engine.device))
        for moment in ("exp_avg", "exp_avg_sq"):
            m = moments[f"{key}::{moment}"].to(engine.device)
            if hasattr(p, "_hp_mapping"):
                safe_set_full_optimizer_state(p, m, moment)
            else:
                opt.state[p][moment].copy_(m.to(opt.state[p][moment].dtype))
    for p in opt.param_groups[group]["params"]:
        opt.state[p]["step"] = torch.tensor(float(step))


def schedule_state(learning_rate: float, lr_lambda, steps_done: int) -> dict[str, Any]:
    """The ``LambdaLR`` state a job alone would save after ``steps_done`` optimizer steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    for _ in range(steps_done):
        opt.step()
        schedule.step()
    return schedule.state_dict()
