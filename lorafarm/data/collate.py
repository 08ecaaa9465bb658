"""Micro batches as tensors. Unpacked rows get a 2D padding mask; packed rows a 4D float
block-diagonal causal mask ``[b,1,q,k]`` plus per-example ``position_ids``.

The training step asks for the cheapest mask that is still exact (``minimal_mask=True``):
unpacked rows that are all full need no mask at all (attention takes SDPA's causal fast path,
no mask tensor is built or read), and with ``packed_mask="position_ids"`` packed rows carry
only their ``position_ids``, which restart at 0 for every example (padding: 0 each, so every pad
token is its own one-token segment). transformers then derives the block-diagonal mask itself
(``masking_utils.find_packed_sequence_indices``), and flash attention uses its variable-length
kernel with no mask at all; the 4D mask stays the default (eager attention ignores position ids)."""

from __future__ import annotations

from typing import Any

import torch

from .formats import IGNORE


def collate(rows: list[dict[str, Any]], pad_id: int, packing: bool, dtype: torch.dtype = torch.float32, *,
            minimal_mask: bool = False, packed_mask: str = "4d") -> dict[str, torch.Tensor]:
    b, n = len(rows), max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((b, n), pad_id, dtype=torch.long)
    labels = torch.full((b, n), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((b, n), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        input_ids[i, :k] = torch.tensor(r["input_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
        position_ids[i, :k] = torch.tensor(r["position_ids"])
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if minimal_mask and not packing and all(len(r["input_ids"]) == n for r in rows):
        return out  # nothing padded: causal attention needs no mask
    if packing and packed_mask == "position_ids":
        return out
    if packed_mask not in ("4d", "position_ids"):
        raise ValueError(f"packed_mask: {packed_mask!r} — use 4d or position_ids")
    if not packing:
        mask = torch.zeros((b, n), dtype=torch.long)
        for i, r in enumerate(rows):
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask}
    allowed = torch.zeros((b, n, n), dtype=torch.bool)
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    for i, r in enumerate(rows):
        start = 0
        for length in r["seq_lens"]:
            end = start + length
            allowed[i, start:end, start:end] = causal[:length, :length]
            start = end
        idx = torch.arange(start, n)
        allowed[i, idx, idx] = True  # padding attends to itself only: no all-masked rows, no NaN
    mask = torch.zeros((b, 1, n, n), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask}


def count_label_tokens(rows: list[dict[str, Any]]) -> int:
    return sum(sum(1 for x in r["labels"] if x != IGNORE) for r in rows)
