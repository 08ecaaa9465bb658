"""A step time for a shape nothing similar has run with yet, from FLOPs.

LoRA on a frozen base costs about 4 FLOPs per parameter per token (forward 2, backward 2: the
activation gradients flow through the whole model, weight gradients only through the small
adapters), 6 with gradient checkpointing (the forward runs twice). One step trains
``global_batch × seq_len`` tokens (without packing, rows fill about half their ``seq_len``).
A GPU delivers ``peak × MFU`` (30 %: typical for LoRA); a CPU worker about 20 GFLOP/s per core
(measured order for fp32 matmuls in torch on a laptop core). The estimator corrects this prior by
what similar shapes measured (:meth:`Estimator.calibration`), so it need only be the right order.
"""

from __future__ import annotations

import re

from ..ops.accel import peak_flops

GPU_MFU = 0.30
CPU_FLOPS_PER_CORE = 2e10
DEFAULT_GPU_FLOPS = 312e12  # an A100 when the type is unknown
UNPADDED_FILL = 0.5  # average fraction of seq_len a row uses without packing
STEP_OVERHEAD_S = 0.05  # optimizer, all-reduce and data loading per step
TINY_PARAMS = 870_000  # the built-in tiny-llama (4 layers, hidden 128, vocab 320)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def model_params(base_model: str, known: dict[str, int] | None = None) -> int:
    """Parameters of ``base_model``: what runs reported (``known``: base model -> total_params),
    else the size in its name (``Llama-3.1-8B`` -> 8e9, ``SmolLM-135M`` -> 1.35e8), else 1e9."""
    if known and base_model in known:
        return int(known[base_model])
    if base_model == "tiny-llama":
        return TINY_PARAMS
    sizes = _SIZE.findall(base_model.rsplit("/", 1)[-1])
    if sizes:
        value, unit = sizes[-1]
        return int(float(value) * (1e9 if unit in "bB" else 1e6))
    return 1_000_000_000


def flops_prior_step_s(params: int, global_batch: int, seq_len: int, workers: int, gpus_per_worker: float,
                       cpus_per_worker: float = 1.0, packing: bool = False, grad_checkpointing: bool = False,
                       accelerator: str = "gpu") -> float:
    """Seconds per optimizer step from FLOPs (see the module docstring)."""
    tokens = global_batch * seq_len * (1.0 if packing else UNPADDED_FILL)
    flops = (6.0 if grad_checkpointing else 4.0) * params * tokens
    if gpus_per_worker > 0:
        peak = peak_flops(accelerator, env={}) if accelerator not in ("gpu", "") else None
        rate = (peak or DEFAULT_GPU_FLOPS) * GPU_MFU * gpus_per_worker
    else:
        rate = CPU_FLOPS_PER_CORE * max(1.0, cpus_per_worker)
    return STEP_OVERHEAD_S + flops / (rate * max(1, workers))
