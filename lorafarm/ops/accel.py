"""Accelerator figures a worker adds to its step events on GPU: peak memory and model FLOPs
utilisation (MFU). On CPU they are absent (not zero), so dashboards show no data, not a lie.

MFU = 6 · N_params · tokens/s ÷ (peak FLOPs of one device × devices in the gang). ``tokens/s``
is the gang's (all ranks summed) and ``N_params`` counts every parameter of the model, frozen
base included, with the usual 6 FLOPs per parameter per token (forward 2, backward 4). With a
frozen base the backward does not compute weight gradients, so real LoRA work is nearer 4·N: this
MFU is the conventional, comparable figure, not a precise one.
"""

from __future__ import annotations

import os
from typing import Any

PEAK_FLOPS_ENV = "LORAFARM_PEAK_FLOPS"

# Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), by a substring of
# ``torch.cuda.get_device_name()``; the first match wins, so longer names come first.
# ``None`` marks a device whose figure is not published: set the env override for it.
PEAK_BF16_FLOPS: tuple[tuple[str, float | None], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", None),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
)


def peak_flops(device_name: str, env: dict[str, str] | None = None) -> float | None:
    """Peak bf16 FLOP/s of one device: ``$LORAFARM_PEAK_FLOPS`` (e.g. ``989e12``) when set, else
    the table by device name; None when unknown (then no MFU is reported)."""
    env = os.environ if env is None else env
    override = env.get(PEAK_FLOPS_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    name = device_name.upper()
    for key, flops in PEAK_BF16_FLOPS:
        if key.upper() in name:
            return flops
    return None


def mfu(total_params: int, tokens_per_s: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (see the module docstring); None without a peak."""
    if not peak or devices <= 0:
        return None
    return 6.0 * total_params * tokens_per_s / (peak * devices)


def gpu_step_metrics(device: Any, total_params: int, tokens_per_s: float, devices: int) -> dict[str, float]:
    """``gpu_memory_bytes`` (``torch.cuda.max_memory_allocated`` of this rank) and ``mfu`` for a
    step event; empty on a non-CUDA device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    out: dict[str, float] = {"gpu_memory_bytes": float(torch.cuda.max_memory_allocated(device))}
    value = mfu(total_params, tokens_per_s, devices, peak_flops(torch.cuda.get_device_name(device)))
    if value is not None:
        out["mfu"] = value
    return out
