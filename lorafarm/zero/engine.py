"""Build the DeepSpeed engine so that only LoRA parameters reach the optimizer, and count
what the optimizer really holds."""

from __future__ import annotations

from typing import Any

from ..spec import JobSpec
from .config import ds_config, lr_lambda


def skip_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-building its CPU shared-memory all-reduce op.

    The build runs in every new worker under one machine-wide lock file
    (``~/.cache/torch_extensions/.../lock``): a worker killed inside that window (a cancel
    during start-up) leaves the lock behind and every later job on the machine waits forever,
    and two checkouts rebuild it in turn. LoRA gradients are a few MB at most, so DeepSpeed's
    fallback (plain torch.distributed over gloo) costs nothing measurable. Set
    ``LORAFARM_DS_SHM_COMM=1`` to keep the op. GPU backends never use it.
    """
    import os

    if os.environ.get("LORAFARM_DS_SHM_COMM") == "1":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _skippable_adamw():
    """torch's AdamW that leaves weights and moments untouched for one step when ``skip_next``
    is set (a non-finite loss under ``training.on_nonfinite_loss: skip``). DeepSpeed calls the
    innermost optimizer's ``step()`` at each accumulation boundary, under every ZeRO stage."""
    import torch

    class SkippableAdamW(torch.optim.AdamW):
        skip_next = False

        def step(self, closure=None):
            if self.skip_next:
                self.skip_next = False
                return None
            return super().step(closure)

    return SkippableAdamW


def build_engine(model, spec: JobSpec, world_size: int, total_steps: int):
    """``deepspeed.initialize`` with a torch AdamW over the trainable (LoRA) parameters only.
    Returns the engine and its LR schedule (linear warm-up, then cosine: :func:`lr_lambda`)."""
    import deepspeed
    import torch

    skip_cpu_shm_comm_op()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters: LoRA was not applied")
    optimizer = _skippable_adamw()(
        params, lr=spec.training.learning_rate, betas=(0.9, 0.999), eps=1e-8,
        weight_decay=spec.training.weight_decay,
    )
    config = ds_config(spec, world_size, total_steps)
    t = spec.training
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.warmup_steps, total_steps, t.min_lr_ratio)
    )
    engine, _, _, lr_schedule = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=config, dist_init_required=False
    )
    return engine, lr_schedule


def base_optimizer(engine):
    """The innermost ``torch.optim.Optimizer`` (ZeRO wraps it)."""
    import torch

    opt = engine.optimizer
    for _ in range(4):
        if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer"):
            return opt
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            return opt
        opt = inner
    return opt


def optimizer_state_bytes(engine) -> int:
    """Bytes of this rank's optimizer state (Adam moments) plus fp32 master copies held by
    ZeRO for low-precision training. Sum over ranks for the job's figure."""
    import torch

    opt = base_optimizer(engine)
    total = 0
    seen: set[int] = set()
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0 and id(value) not in seen:
                seen.add(id(value))
                total += value.numel() * value.element_size()
    # Low-precision training keeps fp32 masters: ZeRO's optimizer parameters are those masters.
    if engine.bfloat16_enabled() or engine.fp16_enabled():
        for group in opt.param_groups:
            for p in group["params"]:
                if p.dtype == torch.float32 and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


def optimizer_param_numel(engine) -> int:
    """Elements the optimizer updates on this rank (ZeRO partitions, padding included),
    counted from Adam's first-moment tensors, which exist for exactly those elements."""
    opt = base_optimizer(engine)
    return sum(s["exp_avg"].numel() for s in opt.state.values() if "exp_avg" in s)


def optimizer_params(engine) -> list:
    """The model parameters the engine's optimizer updates. ZeRO hands the inner optimizer flat
    fp32 partitions instead, so the model's own parameters are read from the ZeRO optimizer's
    groups (``bit16_groups`` for stages 1-2, ``fp16_groups`` for stage 3, ``bf16_groups`` for
    DeepSpeed's bf16 optimizer); without ZeRO they are the optimizer's param groups."""
    import torch

    outer = engine.optimizer
    for attr in ("bit16_groups", "fp16_groups", "bf16_groups"):
        groups = getattr(outer, attr, None)
        if groups:
            break
    else:
        groups = [g["params"] for g in base_optimizer(engine).param_groups]
    out: list = []

    def walk(x):
        if isinstance(x, torch.nn.Parameter) or torch.is_tensor(x):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)

    walk(list(groups))
    return out


def is_lora(name: str) -> bool:
    """A PEFT LoRA factor (``lora_A``, ``lora_B``, DoRA's ``lora_magnitude_vector``, ...)."""
    return "lora_" in name


def memory_report(engine, model) -> dict[str, Any]:
    """What trains. ``frozen_with_grad``: the base (non-LoRA) parameters that could change —
    those with ``requires_grad``, a gradient, or a place in the optimizer's groups; it must be
    ``[]``. (Under ZeRO a gradient alone says nothing — ZeRO frees or partitions them — so
    ``requires_grad`` and the optimizer's groups are what is checked.) ``optimizer_params``
    counts the elements of the model parameters the optimizer updates (it equals
    ``trainable_params`` when only LoRA trains); ``optimizer_non_model``, the optimizer's
    tensors that are no model parameter (0: the groups read are the model's own)."""
    names = {id(p): n for n, p in model.named_parameters()}
    held = optimizer_params(engine)
    in_optimizer = {id(p) for p in held}
    frozen = [n for n, p in model.named_parameters() if not is_lora(n)
              and (p.requires_grad or p.grad is not None or id(p) in in_optimizer)]
    return {
        "trainable_params": sum(_numel(p) for n, p in model.named_parameters() if p.requires_grad),
        "total_params": _total_params(model),
        "optimizer_state_bytes": optimizer_state_bytes(engine),
        "optimizer_numel": optimizer_param_numel(engine),
        "optimizer_params": sum(_numel(p) for p in held),
        "optimizer_non_model": sum(1 for p in held if id(p) not in names),
        "frozen_with_grad": frozen,
    }


def _numel(p) -> int:
    """Full element count, also for a ZeRO-3 partitioned parameter (whose local data is empty)."""
    return getattr(p, "ds_numel", None) or p.numel()


def _total_params(model) -> int:
    return sum(_numel(p) for p in model.parameters())
