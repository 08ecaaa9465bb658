"""Checks an adapter must pass before it is published."""

from __future__ import annotations

import torch

from ..errors import AdapterError


def expected_lora_modules(peft_model) -> dict[str, tuple[int, int]]:
    """{module path (as in PEFT keys): (in_features, out_features)} for every adapted layer."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            in_f = getattr(base, "in_features", None)
            out_f = getattr(base, "out_features", None)
            if hasattr(base, "ds_shape") and in_f is None:
                out_f, in_f = base.weight.ds_shape
            out[name] = (int(in_f), int(out_f))
    return out


def verify_state(state: dict[str, torch.Tensor], modules: dict[str, tuple[int, int]], r: int,
                 steps_done: int) -> list[str]:
    """Every adapted module present with A [r, in] and B [out, r], all finite, B not all zero."""
    problems: list[str] = []
    if not state:
        return ["the adapter is empty (no LoRA tensors were gathered)"]
    if not modules:
        problems.append("no LoRA layers found in the trained model")
    for name, (in_f, out_f) in sorted(modules.items()):
        key = name.replace(".default", "")
        a = state.get(f"{key}.lora_A.weight")
        b = state.get(f"{key}.lora_B.weight")
        if a is None or b is None:
            problems.append(f"{key}: lora_A/lora_B missing")
            continue
        if tuple(a.shape) != (r, in_f):
            problems.append(f"{key}.lora_A: shape {tuple(a.shape)}, expected {(r, in_f)}")
        if tuple(b.shape) != (out_f, r):
            problems.append(f"{key}.lora_B: shape {tuple(b.shape)}, expected {(out_f, r)}")
        if steps_done > 0 and b.numel() and not torch.any(b != 0):
            problems.append(f"{key}.lora_B: all zeros after {steps_done} steps (nothing was trained)")
    for key, t in state.items():
        if not torch.isfinite(t).all():
            problems.append(f"{key}: contains NaN or inf")
    return problems


def require(problems: list[str]) -> None:
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise AdapterError("adapter failed verification, not published:\n  " + "\n  ".join(shown))


def compare_logits(expected: torch.Tensor, actual: torch.Tensor, precision: str) -> str | None:
    tol = 1e-4 if precision == "fp32" else 3e-2
    diff = (expected.float() - actual.float()).abs().max().item()
    scale = expected.float().abs().max().item() or 1.0
    if diff > tol * max(1.0, scale):
        return f"reloaded adapter's logits differ from the trained model's by {diff:.3g} (tolerance {tol:g})"
    return None
