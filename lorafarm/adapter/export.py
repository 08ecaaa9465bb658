"""Gather the full LoRA tensors on every rank, for every ZeRO stage.

Under ZeRO-3 each rank holds a shard of every parameter (``ds_numel`` elements, local data
empty), which is how DeepSpeed + PEFT users end up saving empty adapters. We gather the
LoRA parameters explicitly before reading them.
"""

from __future__ import annotations

import contextlib

import torch


def _gathered(params: list[torch.nn.Parameter]):
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def gather_lora_state(model) -> dict[str, torch.Tensor]:
    """{PEFT key: full fp32 CPU tensor} for every LoRA parameter. Collective under ZeRO-3:
    every rank must call it."""
    from peft import get_peft_model_state_dict

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with _gathered([p for _, p in named]):
        full = {n: p.detach().to(torch.float32).cpu().clone() for n, p in named}
    return get_peft_model_state_dict(model, state_dict=full)
