"""Wrap the frozen base with PEFT LoRA so only the LoRA factors are trainable."""

from __future__ import annotations

from ..errors import PreflightError
from ..spec import LoraSpec


def lora_config(spec: LoraSpec):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        bias="none",
    )


def linear_module_names(model) -> set[str]:
    """Short names (suffixes) of every Linear module except the output head."""
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head")
    }


def missing_targets(model, spec: LoraSpec) -> list[str]:
    if spec.target_modules == "all-linear":
        return []
    names = linear_module_names(model)
    return [t for t in spec.target_modules if t not in names]


def apply_lora(model, spec: LoraSpec, seed: int, adapter_name: str = "default"):
    """A PEFT model whose only trainable parameters are LoRA factors (init seeded); its adapter
    is ``adapter_name`` (a co-training pack names each member's)."""
    import torch
    from peft import get_peft_model

    missing = missing_targets(model, spec)
    if missing:
        known = ", ".join(sorted(linear_module_names(model)))
        raise PreflightError(
            [f"lora.target_modules: {', '.join(missing)} not found in the base model — use some of: {known} (or all-linear)"]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora_config(spec), adapter_name=adapter_name)
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft_model

