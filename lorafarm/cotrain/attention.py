"""Attention over a pack's batch, computed for each member's rows exactly as its own micro
batch would compute it.

A pack pass concatenates the members' micro batches, so each row is padded to the longest row
of the pass, not of its own micro batch. Linear layers, norms and the loss are per row and do
not care, but SDPA does: a micro batch of full rows takes its causal fast path (no mask), a
padded one the masked path, and on CPU the two differ by ~5e-7 relative in the logits — which
Adam's near-sign first updates grow to ~2e-5 in the adapter after a few steps (measured: a
batch-1 member packed with a longer one). So inside :func:`member_segments` the pack's attention
runs SDPA once per member segment, cut back to that segment's own length, with the mask its
micro batch would have had (none when its rows are all full and unpacked: the causal path).
Masked paths of different padded lengths are identical (measured: 64 vs 128 columns, and 2 vs
3 rows, 0.0 difference), so the cut mask reproduces the solo one exactly.

Only the SDPA implementation is wrapped (``lorafarm_pack_sdpa``, registered with transformers'
attention and mask interfaces as SDPA's own functions); eager attention is already exact
(0.0 difference) and flash attention keeps its own path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch

NAME = "lorafarm_pack_sdpa"
# (start, end, length, causal) per member segment of the current pass, or None outside a pack pass
_SEGMENTS: ContextVar[tuple[tuple[int, int, int, bool], ...] | None] = ContextVar("lorafarm_pack_segments",
                                                                                   default=None)


def segments_of(members: Sequence[str], lengths: Sequence[int], packing: bool) -> list[tuple[int, int, int, bool]]:
    """Each run of one member's consecutive rows: (start, end, its longest row, whether its
    micro batch alone would take the causal fast path — unpacked rows all of that length,
    exactly :func:`lorafarm.data.collate`'s ``minimal_mask`` rule)."""
    out, start = [], 0
    for i in range(1, len(members) + 1):
        if i == len(members) or members[i] != members[start]:
            n = max(lengths[start:i])
            out.append((start, i, n, not packing and all(x == n for x in lengths[start:i])))
            start = i
    return out


@contextlib.contextmanager
def member_segments(segments: Sequence[tuple[int, int, int, bool]]) -> Iterator[None]:
    """Forwards (and backward recomputations) inside attend each segment on its own."""
    token = _SEGMENTS.set(tuple(segments))
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def use_pack_attention(model) -> bool:
    """Switch a PEFT/transformers model on SDPA to the per-segment SDPA; False if it is not on SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, pack_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    for m in model.modules():  # every sub-config the model's layers read
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "_attn_implementation", None) == "sdpa":
            cfg._attn_implementation = NAME
    return True


def pack_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, **kwargs):
    """SDPA per member segment (query/key/value: [batch, heads, length, dim]); the output
    [batch, length, heads, dim] as transformers' SDPA returns it, zeros at padding past a
    segment's own length (padding: never a key of a real token, never labelled)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _SEGMENTS.get()
    if segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, _, length, _ = query.shape
    out = query.new_zeros(batch, length, query.shape[1], value.shape[-1])
    for start, end, n, causal in segments:
        mask = None if causal or attention_mask is None else attention_mask[start:end, ..., :n, :n]
        part, _ = sdpa_attention_forward(module, query[start:end, :, :n], key[start:end, :, :n],
                                         value[start:end, :, :n], mask, **kwargs)
        out[start:end, :n] = part
    return out, None
