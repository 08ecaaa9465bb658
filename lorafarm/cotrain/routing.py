"""Several jobs' adapters on one frozen base, each row through its own job's adapter only.

The first piece of co-training (issue 20): one PEFT model holds every pack member's adapter
(each with its own rank, alpha, dropout and target modules, initialised from its own seed as
it would be alone), and inside :func:`routed` every LoRA layer adds to row ``i`` only the
adapter ``members[i]`` names. The pack's LoRA layers have no active adapter, so PEFT computes
the frozen base once for the whole batch; a forward hook per LoRA layer then adds each member's
``B(A(dropout(x))) * scaling`` to its rows, taken as slices of consecutive rows (a pack orders
its rows by member), so the routing costs no gather or scatter. (PEFT's own mixed-adapter path,
``_mixed_batch_forward``, gathers and scatters every adapter's rows by index in every layer and is
refused in training mode; measured on a 4-member pack it spent a quarter of the step there.)

Exactness: a row's activations depend only on that row (attention, norms and MLPs are per row),
so each row's loss, and each adapter's gradient from its own rows, is what the job alone would
compute; a member's loss is normalised by its own label-token count (:func:`member_loss`), so
its gradient is the solo gradient, not a share of the pack's. Each member keeps its own
parameters (:func:`member_parameters`), optimizer group, learning rate, schedule and clipping
norm (:func:`lorafarm.cotrain.member_optimizer`). With LoRA dropout > 0 the masks are drawn by
the pack (``nn.Dropout`` per member), not as the job alone would draw them: exact at dropout 0.
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
    from ..model.lora import apply_lora

    (first, (lora, seed)), *rest = members.items()
    model = apply_lora(base, lora, seed, adapter_name=first)
    _no_active_adapter(model)
    for name, (lora, seed) in rest:
        add_member(model, name, lora, seed)
    return model


def _no_active_adapter(model) -> None:
    """PEFT applies no adapter by itself (the base only): :func:`routed` adds each member's to
    its rows. PEFT's ``set_adapter`` also freezes what is not active: the members train again."""
    from peft.tuners.lora import Linear, LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer):
            if not isinstance(m, Linear) or m.lora_variant:  # routed() adds lora_B(lora_A(x)) of linear layers
                raise ValueError(f"co-training supports plain LoRA on linear layers only, not {type(m).__name__}"
                                 + (" with a variant (DoRA, …)" if getattr(m, "lora_variant", None) else ""))
            m.set_adapter([])
    for name in model.peft_config:  # every member's adapter
        for p in member_parameters(model, name):
            p.requires_grad_(True)


def add_member(model, name: str, lora, seed: int) -> None:
    """Add member ``name``'s adapter (a :class:`~lorafarm.spec.LoraSpec`) to the PEFT ``model``,
    initialised from ``seed`` exactly as :func:`~lorafarm.model.apply_lora` would alone; its
    factors train, the base stays frozen."""
    from ..model.lora import lora_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(name, lora_config(lora))
    _no_active_adapter(model)


def member_parameters(model, name: str) -> list[torch.nn.Parameter]:
    """Member ``name``'s LoRA factors (its optimizer's and its clipping norm's parameters)."""
    suffix = f".{name}.weight"
    return [p for n, p in model.named_parameters() if "lora_" in n and n.endswith(suffix)]


@contextlib.contextmanager
def routed(model, members: Sequence[str]) -> Iterator[None]:
    """Forwards inside apply to row ``i`` of the batch only adapter ``members[i]`` (a layer
    without that member's adapter gives the row the base output). Rows of one member should be
    consecutive: each run of them is one slice per layer. Under gradient checkpointing the
    backward runs layers' forwards again: keep it inside too (outside, torch's checkpoint
    refuses the unrouted recomputation)."""
    from peft.tuners.lora import LoraLayer

    blocks, start = [], 0
    for i in range(1, len(members) + 1):
        if i == len(members) or members[i] != members[start]:
            blocks.append((members[start], start, i))
            start = i
    hook = partial(_add_members, blocks=blocks, rows=len(members))
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _add_members(module, args, output, blocks, rows):
    x = args[0]
    if x.shape[0] != rows:
        raise ValueError(f"routed: the batch has {x.shape[0]} rows but {rows} members were named")
    for name, start, end in blocks:
        if name not in module.lora_A:
            continue
        a, b = module.lora_A[name], module.lora_B[name]
        part = x[start:end].to(a.weight.dtype)
        output[start:end] += (b(a(module.lora_dropout[name](part))) * module.scaling[name]).to(output.dtype)
    return output


def member_loss(token_loss: torch.Tensor, members: Sequence[str], label_tokens: dict[str, int]) -> torch.Tensor:
    """The pack's loss from per-row summed token cross-entropy (``token_loss[i]``): each member's
    rows summed and divided by that member's own label tokens (its global batch's), then summed
    over members — so each adapter's gradient is exactly its solo job's."""
    scale = torch.tensor([1.0 / max(1, label_tokens[m]) for m in members], dtype=token_loss.dtype,
                         device=token_loss.device)
    return (token_loss * scale).sum()


def member_state(model, name: str) -> dict[str, torch.Tensor]:
    """Member ``name``'s adapter as PEFT saves a job's own (keys without the member's name, fp32
    on the CPU): with ``model.peft_config[name]`` it is the member's PEFT adapter
    (:func:`lorafarm.adapter.save.save_peft`), loadable alone by ``PeftModel.from_pretrained``."""
    from peft import get_peft_model_state_dict

    full = {n: p.detach().to(torch.float32).cpu().clone() for n, p in model.named_parameters() if "lora_" in n}
    return get_peft_model_state_dict(model, state_dict=full, adapter_name=name)
