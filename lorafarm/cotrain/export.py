"""A pack member's adapter, published as its job alone would publish it.

The member's factors are taken out of the pack under its job's PEFT keys
(:func:`~lorafarm.cotrain.member_state`), checked like any adapter (every adapted module, shapes,
finite, B not all zero), saved in PEFT's format with the member's own ``LoraConfig``, reloaded
alone by ``PeftModel.from_pretrained`` onto a fresh base — its logits must be the pack's logits
for rows routed to that member — and published with the member's own manifest (its job id).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..adapter.export import _reload_problems
from ..adapter.manifest import adapter_manifest
from ..adapter.save import publish, save_peft
from ..adapter.verify import require, verify_state


def member_modules(model, name: str) -> dict[str, tuple[int, int]]:
    """{module path: (in, out)} of the layers that carry member ``name``'s adapter."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            base = module.get_base_layer()
            out[path] = (int(base.in_features), int(base.out_features))
    return out


def export_member(recipe, m) -> dict[str, Any]:
    """Rank 0: check, reload-check and publish member ``m``'s adapter; its published manifest."""
    from ..data import collate
    from ..model import load_base
    from .routing import member_state, routed

    model, spec = recipe.model, m.spec
    state = member_state(model, m.name)
    require(verify_state(state, member_modules(model, m.name), spec.lora.r, m.done))
    rows = m.rows.take(range(min(2, len(m.rows))))
    batch = collate(rows, recipe.pad_id, spec.training.packing, dtype=recipe.dtype)
    probe = {k: batch[k].to(recipe.device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    model.eval()
    with torch.no_grad(), routed(model, [m.name] * len(rows)):
        expected = model(**probe, use_cache=False).logits.float().cpu()
    model.train()
    fresh = load_base(recipe.base_dir, dtype=recipe.dtype, trust_remote_code=spec.trust_remote_code).to(recipe.device)
    with tempfile.TemporaryDirectory(prefix="lorafarm-adapter-") as tmp:
        out = save_peft(Path(tmp), state, model.peft_config[m.name], spec.base_model)
        require(_reload_problems(out, fresh, probe, expected, recipe.precision))
        return publish(out, m.cfg.adapter_uri, _manifest(recipe, m))


def _manifest(recipe, m) -> dict[str, Any]:
    import time

    from .routing import member_parameters

    t = m.spec.training
    return adapter_manifest(
        m.spec,
        job_id=m.cfg.job_id,
        base_weights_digest=recipe.base_digest,
        dataset_fingerprint=m.cfg.dataset_fingerprint,
        data_stats=m.cfg.data_stats,
        metrics={
            "steps": m.done,
            "tokens_seen": m.tokens_seen,
            "final_train_loss": m.history[-1]["loss"] if m.history else None,
            "initial_eval_loss": m.first_eval,
            "final_eval_loss": m.last_eval,
            "trainable_params": sum(p.numel() for p in member_parameters(recipe.model, m.name)),
            "co_trained": {"members": len(recipe.members)},
            "wall_seconds": time.time() - m.cfg.started_at,
        },
        world_size=recipe.world,
        precision=recipe.precision,
        grad_accum_steps=max(1, t.global_batch_size // (t.micro_batch_size * recipe.world)),
    )

