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


def memory_report(engine, model) -> dict[str, Any]:
    return {
        "trainable_params": sum(_numel(p) for p in model.parameters() if p.requires_grad),
        "total_params": _total_params(model),
        "optimizer_state_bytes": optimizer_state_bytes(engine),
        "optimizer_numel": optimizer_param_numel(engine),
        "frozen_with_grad": [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None],
    }


def _numel(p) -> int:
    """Full element count, also for a ZeRO-3 partitioned parameter (whose local data is empty)."""
    return getattr(p, "ds_numel", None) or p.numel()


def _total_params(model) -> int:
    return sum(_numel(p) for p in model.parameters())
