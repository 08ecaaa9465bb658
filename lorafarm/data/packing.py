"""Rows for training: one example per row, or several packed (greedy, order-preserving).

Each row keeps ``position_ids`` restarting at 0 per example and ``seq_lens`` (segment
lengths), from which :mod:`collate` builds a block-diagonal causal mask."""

from __future__ import annotations

from typing import Any

from .formats import IGNORE


def _row(segments: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    if len(segments) == 1:  # no packing: the example's own lists (a fifth of in-process tokenization was copies)
        ids, labels = segments[0]
        return {"input_ids": ids, "labels": labels, "position_ids": list(range(len(ids))), "seq_lens": [len(ids)],
                "n_labels": len(labels) - labels.count(IGNORE)}
    ids, labels, pos, lens = [], [], [], []
    for s_ids, s_labels in segments:
        ids += s_ids
        labels += s_labels
        pos += list(range(len(s_ids)))
        lens.append(len(s_ids))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lens": lens,
            "n_labels": len(labels) - labels.count(IGNORE)}


def to_rows(examples: list[tuple[list[int], list[int]]], seq_len: int, packing: bool) -> list[dict[str, Any]]:
    """``examples`` = (input_ids, labels) pairs, each at most ``seq_len`` long."""
    if not packing:
        return [_row([e]) for e in examples]
    rows, current, used = [], [], 0
    for e in examples:
        if current and used + len(e[0]) > seq_len:
            rows.append(_row(current))
            current, used = [], 0
        current.append(e)
        used += len(e[0])
    if current:
        rows.append(_row(current))
    return rows
