"""The DeepSpeed config, derived from the spec alone (no data formats, no Ray)."""

from __future__ import annotations

import math
from typing import Any

from ..spec import JobSpec


def ds_config(spec: JobSpec, world_size: int, total_steps: int) -> dict[str, Any]:
    """ZeRO stage, micro batch, accumulation (so the global batch is fixed whatever the
    worker count), clipping and precision. The schedule is :func:`lr_lambda`, handed to
    ``deepspeed.initialize`` (DeepSpeed's WarmupCosineLR refuses zero warm-up steps)."""
    t = spec.training
    accum = spec.grad_accum_steps(world_size)
    precision = spec.resolved_precision()
    stage = spec.resolved_stage(world_size)
    cfg: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if stage == 3:
        cfg["zero_optimization"].update(
            {"stage3_gather_16bit_weights_on_model_save": False, "stage3_param_persistence_threshold": 0}
        )
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return cfg


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Multiplier of the peak LR at optimizer step ``s``: linear warm-up, then cosine to ``min_ratio``."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
