"""Dropout whose masks do not depend on the worker count: exact resume across worker counts.

``torch.nn.Dropout`` draws from the process's RNG stream, so the mask a row gets depends on
which rank trains it and on what that rank drew before — change the worker count (or the
micro batch) and every mask changes. :class:`RowSeededDropout` draws each row's mask from a
generator seeded by ``(training.seed, optimizer step, the row's position in the global batch,
the module's name)``: the same row at the same step gets the same mask on 1, 2 or 4 workers,
in any micro batch, on a fresh or a resumed run, and when gradient checkpointing recomputes
the forward. Masks are drawn for the spec's full ``seq_len`` and cut to the micro batch's
padded length (rows are right-padded), so padding does not shift them either.

What it covers: every ``torch.nn.Dropout`` module of the model with ``p > 0`` — LoRA's
``lora_dropout`` and any dropout module of the base. Functional dropout inside a base model's
own code (``attention_dropout > 0`` in a transformers config) is not a module and keeps
torch's stream; the built-in tiny-llama and Llama checkpoints have it at 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class DropoutRows:
    """What the next forward trains on: set by the recipe before every micro batch."""

    seed: int
    max_len: int
    step: int = 0
    rows: list[int] = field(default_factory=list)  # positions in the step's global batch, one per batch row

    def set(self, step: int, rows: list[int]) -> None:
        self.step, self.rows = step, list(rows)


def row_seed(seed: int, step: int, row: int, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{step}/{row}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class RowSeededDropout(torch.nn.Module):
    """``nn.Dropout(p)`` with per-row masks from :class:`DropoutRows` (inputs ``[batch, seq, ...]``)."""

    def __init__(self, p: float, name: str, rows: DropoutRows):
        super().__init__()
        self.p, self.name, self._rows = float(p), name, rows

    def extra_repr(self) -> str:
        return f"p={self.p}, name={self.name!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        ctx = self._rows
        if x.dim() < 2 or x.shape[0] != len(ctx.rows):
            raise RuntimeError(f"{self.name}: dropout input {tuple(x.shape)} does not match the "
                               f"{len(ctx.rows)} rows the recipe announced")
        length = x.shape[1]
        shape = (max(ctx.max_len, length), *x.shape[2:])
        gen = torch.Generator(device=x.device)
        keep = []
        for row in ctx.rows:
            gen.manual_seed(row_seed(ctx.seed, ctx.step, row, self.name))
            keep.append(torch.rand(shape, generator=gen, device=x.device)[:length] >= self.p)
        mask = torch.stack(keep).to(x.dtype)
        return x * mask / (1.0 - self.p)


def seed_dropout_by_row(model: torch.nn.Module, rows: DropoutRows) -> int:
    """Replace every ``nn.Dropout`` with ``p > 0`` in ``model`` by a :class:`RowSeededDropout`
    reading ``rows``; returns how many were replaced."""
    targets = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if type(child) is torch.nn.Dropout and child.p > 0:
                targets.append((parent, child_name, f"{parent_name}.{child_name}".lstrip("."), child.p))
    for parent, child_name, full, p in targets:
        setattr(parent, child_name, RowSeededDropout(p, full, rows))
    return len(targets)
