"""Collate and packing: padding masks, greedy order-preserving packing, block-diagonal causal
masks, and a packed batch giving tiny-llama the same logits and loss as an unpacked one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorafarm.data import (
    IGNORE,
    collate,
    encode,
    to_rows,
)
from lorafarm.model.tiny import build_model


def test_collate_unpacked_pads_with_2d_mask(tiny_tokenizer):
    rows = to_rows([(e.input_ids, e.labels) for e in (encode({"text": t}, "text", tiny_tokenizer, 64) for t in ("ab", "abcdef"))],
                   64, packing=False)
    b = collate(rows, tiny_tokenizer.pad_token_id, packing=False)
    assert b["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 8]
    assert b["input_ids"][0, 4:].tolist() == [tiny_tokenizer.pad_token_id] * 4
    assert b["labels"][0, 3:].tolist() == [IGNORE] * 5
    assert b["position_ids"][1].tolist() == list(range(8))


def test_packing_is_greedy_and_order_preserving():
    ex = [([1] * n, [IGNORE] * (n - 1) + [IGNORE]) for n in (5, 4, 3, 9, 2)]
    rows = to_rows(ex, 10, packing=True)
    assert [r["seq_lens"] for r in rows] == [[5, 4], [3], [9], [2]]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_packed_mask_is_block_diagonal_causal(tiny_tokenizer):
    row = to_rows([([1, 5, 6], [5, 6, IGNORE]), ([1, 7], [7, IGNORE])], 8, packing=True)
    b = collate(row + to_rows([([1, 9, 9, 9], [9, 9, 9, IGNORE])], 8, packing=True), 0, packing=True)
    allowed = b["attention_mask"] == 0
    assert b["attention_mask"].shape == (2, 1, 5, 5)
    assert allowed[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],  # the second example never sees the first
        [0, 0, 0, 1, 1],
    ]
    assert allowed[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding attends to itself only
    assert b["position_ids"][0].tolist() == [0, 1, 2, 0, 1]
    assert b["attention_mask"].min() == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model().eval()


def test_packed_batch_gives_the_same_logits_and_loss_as_unpacked(tiny_tokenizer, tiny_model):
    texts = [
        [{"role": "user", "content": "Where be the gold?"}, {"role": "assistant", "content": "Buried, arr."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy, matey! Fair winds."}],
        [{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Ship?"},
         {"role": "assistant", "content": "The Gull."}],
        [{"role": "user", "content": "Rum?"}, {"role": "assistant", "content": "Always."}],
        [{"role": "user", "content": "And the parrot, what does it say?"}, {"role": "assistant", "content": "Squawk"}],
    ]
    encs = [encode({"messages": m}, "chat", tiny_tokenizer, 128) for m in texts]
    pairs = [(e.input_ids, e.labels) for e in encs]
    packed = to_rows(pairs, 128, packing=True)
    assert [len(r["seq_lens"]) for r in packed] == [2, 2, 1]  # several per row; rows of unequal length get padded
    unpacked = to_rows(pairs, 128, packing=False)
    pb, ub = collate(packed, tiny_tokenizer.pad_token_id, True), collate(unpacked, tiny_tokenizer.pad_token_id, False)

    def forward(b):
        with torch.no_grad():
            return tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              position_ids=b["position_ids"]).logits

    def loss(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)

    pl, ul = forward(pb), forward(ub)
    i = 0
    for r, row in enumerate(packed):
        start = 0
        for n in row["seq_lens"]:
            torch.testing.assert_close(pl[r, start : start + n], ul[i, :n], rtol=1e-5, atol=1e-5)
            i += 1
            start += n
    assert loss(pl, pb["labels"]).item() == pytest.approx(loss(ul, ub["labels"]).item(), rel=1e-5)
    assert int((pb["labels"] != IGNORE).sum()) == int((ub["labels"] != IGNORE).sum()) == sum(e.n_labels for e in encs)

    # the check can fail: a plain padding mask lets the second example attend to the first
    leaky = {**pb, "attention_mask": (pb["attention_mask"][:, 0].diagonal(dim1=1, dim2=2) == 0).long()}
    n0, n1 = packed[0]["seq_lens"][:2]
    assert (forward(leaky)[0, n0 : n0 + n1] - ul[1, :n1]).abs().max() > 1e-3
