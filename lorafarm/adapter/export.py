"""From a trained engine to a published adapter: gather (ZeRO-3 included), verify, save in
PEFT format, reload-check, publish with its manifest.

Under ZeRO-3 each rank holds a shard of every parameter (``ds_numel`` elements, local data
empty), which is how DeepSpeed + PEFT users end up saving empty adapters. We gather the
LoRA parameters explicitly before reading them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..spec import JobSpec
from .save import publish, save_peft
from .verify import compare_logits, expected_lora_modules, require, verify_state


def export_adapter(
    engine,
    probe: dict[str, torch.Tensor],
    *,
    spec: JobSpec,
    rank: int,
    steps_done: int,
    fresh_base: Callable[[], Any],
    adapter_uri: str,
    manifest: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """Collective: every rank calls it. Rank 0 checks the gathered tensors, saves them as PEFT
    writes them, checks that PEFT reloads them onto ``fresh_base()`` with the trained model's
    logits on ``probe``, and publishes them with ``manifest()``; it returns the published
    manifest (other ranks None). A failed check raises :class:`~lorafarm.errors.AdapterError`
    and publishes nothing."""
    if hasattr(engine, "empty_partition_cache"):  # ZeRO-3: drop parameters training left gathered or in flight
        engine.empty_partition_cache()
    state = gather_lora_state(engine.module)
    engine.eval()
    with torch.no_grad():
        expected = engine(**probe, use_cache=False).logits.float().cpu()
    if rank != 0:
        return None
    require(verify_state(state, expected_lora_modules(engine.module), spec.lora.r, steps_done))
    with tempfile.TemporaryDirectory(prefix="lorafarm-adapter-") as tmp:
        out = save_peft(Path(tmp), state, engine.module.peft_config["default"], spec.base_model)
        require(_reload_problems(out, fresh_base(), probe, expected, spec.resolved_precision()))
        return publish(out, adapter_uri, manifest())


def _reload_problems(adapter_dir: Path, base, probe: dict[str, torch.Tensor], expected: torch.Tensor,
                     precision: str) -> list[str]:
    """``PeftModel.from_pretrained`` of the saved files on a fresh base: same logits, or the problem."""
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        actual = reloaded(**probe, use_cache=False).logits.float().cpu()
    problem = compare_logits(expected, actual, precision)
    del reloaded, base
    return [problem] if problem else []


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
