"""Several jobs' adapters on one frozen base, each row through its own job's adapter only.

The first piece of co-training (issue 20): one PEFT model holds every pack member's adapter
(each with its own rank, alpha, dropout and target modules, initialised from its own seed as
it would be alone), and inside :func:`routed` every LoRA layer adds to row ``i`` only the
adapter ``members[i]`` names. PEFT already routes rows this way for mixed-adapter inference
(``LoraLayer._mixed_batch_forward``: the frozen base computed once, each adapter applied to its
rows' sub-batch, differentiable), but refuses ``adapter_names`` in training mode at the model's
entry; the routing here passes it to each LoRA layer directly (a forward pre-hook per layer,
as PEFT does itself for inference), so it works while training.

Exactness: a row's activations depend only on that row (attention, norms and MLPs are per row),
so each row's loss, and each adapter's gradient from its own rows, is what the job alone would
compute; a member's loss is normalised by its own label-token count (:func:`member_loss`), so
its gradient is the solo gradient, not a share of the pack's. Each member keeps its own
optimizer (:func:`member_parameters`), learning rate, schedule and clipping norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import torch


def new_pack(base, members: dict[str, tuple]):
    """A PEFT model over the frozen ``base`` holding every member's adapter: ``members`` maps a
    name to ``(LoraSpec, seed)``; each is initialised as :func:`~lorafarm.model.apply_lora` would
    initialise that job's adapter alone."""
    from peft import get_peft_model

    from ..model.lora import lora_config

    (first, (lora, seed)), *rest = members.items()
    base.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, lora_config(lora), adapter_name=first)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in member_parameters(model, first):
        p.requires_grad_(True)
    for name, (lora, seed) in rest:
        add_member(model, name, lora, seed)
    return model


def add_member(model, name: str, lora, seed: int) -> None:
    """Add member ``name``'s adapter (a :class:`~lorafarm.spec.LoraSpec`) to the PEFT ``model``,
    initialised from ``seed`` exactly as :func:`~lorafarm.model.apply_lora` would alone; its
    factors train, the base stays frozen."""
    from ..model.lora import lora_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(name, lora_config(lora))
    for p in member_parameters(model, name):
        p.requires_grad_(True)


def member_parameters(model, name: str) -> list[torch.nn.Parameter]:
    """Member ``name``'s LoRA factors (its optimizer's and its clipping norm's parameters)."""
    suffix = f".{name}.weight"
    return [p for n, p in model.named_parameters() if "lora_" in n and n.endswith(suffix)]


@contextlib.contextmanager
def routed(model, members: Sequence[str]) -> Iterator[None]:
    """Forwards inside apply to row ``i`` of the batch only adapter ``members[i]`` (a layer
    without that member's adapter gives the row the base output)."""
    from peft.tuners.lora import LoraLayer

    names = list(members)
    hook = partial(_with_adapter_names, names=names)
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _with_adapter_names(module, args, kwargs, names):
    x = args[0] if args else None
    if x is not None and x.shape[0] != len(names):
        raise ValueError(f"routed: the batch has {x.shape[0]} rows but {len(names)} members were named")
    return args, {**kwargs, "adapter_names": names}


def member_loss(token_loss: torch.Tensor, members: Sequence[str], label_tokens: dict[str, int]) -> torch.Tensor:
    """The pack's loss from per-row summed token cross-entropy (``token_loss[i]``): each member's
    rows summed and divided by that member's own label tokens (its global batch's), then summed
    over members — so each adapter's gradient is exactly its solo job's."""
    scale = torch.tensor([1.0 / max(1, label_tokens[m]) for m in members], dtype=token_loss.dtype,
                         device=token_loss.device)
    return (token_loss * scale).sum()
