"""Every attention path the training step uses keeps packed rows isolated and takes the fast
path where it can: unpacked full rows reach SDPA with no mask (``is_causal``), padded rows keep
their mask, packed rows are isolated both by the 4D block-diagonal mask and by position ids
alone (transformers derives the blocks; what flash attention's variable-length path relies on)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lorafarm.data import IGNORE, collate, encode, to_rows
from lorafarm.model.loss import full_token_loss_sum
from lorafarm.model.tiny import build_model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model().eval()


class SdpaCalls(TorchFunctionMode):
    """Records (attn_mask is None, is_causal) of every scaled_dot_product_attention call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append((mask is None, bool(kwargs.get("is_causal", False))))
        return func(*args, **kwargs)


def forward(model, b):
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"),
                     position_ids=b["position_ids"], use_cache=False).logits


def test_full_rows_take_the_sdpa_causal_fast_path_with_the_same_result(tiny_model):
    rows = to_rows([(list(range(4, 36)), list(range(5, 36)) + [IGNORE]) for _ in range(3)], 64, packing=False)
    minimal = collate(rows, 0, False, minimal_mask=True)
    assert "attention_mask" not in minimal  # nothing padded: no mask built
    with SdpaCalls() as spy:
        fast = forward(tiny_model, minimal)
    assert spy.calls and all(none and causal for none, causal in spy.calls)
    torch.testing.assert_close(fast, forward(tiny_model, collate(rows, 0, False)), rtol=0, atol=0)


def test_padded_rows_keep_their_mask(tiny_model):
    rows = to_rows([(list(range(4, 36)), [IGNORE] * 32), (list(range(4, 20)), [IGNORE] * 16)], 64, packing=False)
    b = collate(rows, 0, False, minimal_mask=True)
    assert b["attention_mask"].tolist()[1] == [1] * 16 + [0] * 16
    with SdpaCalls() as spy:
        forward(tiny_model, b)
    assert spy.calls and not any(none for none, _ in spy.calls)  # a real mask reaches the kernel


CHATS = [
    [{"role": "user", "content": "Where be the gold?"}, {"role": "assistant", "content": "Buried, arr."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy, matey! Fair winds."}],
    [{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Ship?"},
     {"role": "assistant", "content": "The Gull."}],
    [{"role": "user", "content": "Rum?"}, {"role": "assistant", "content": "Always."}],
    [{"role": "user", "content": "And the parrot, what does it say?"}, {"role": "assistant", "content": "Squawk"}],
]


@pytest.mark.parametrize("packed_mask", ["4d", "position_ids"])
def test_packed_rows_stay_isolated_on_every_mask_path(tiny_tokenizer, tiny_model, packed_mask):
    pairs = [(e.input_ids, e.labels) for e in (encode({"messages": m}, "chat", tiny_tokenizer, 128) for m in CHATS)]
    packed = to_rows(pairs, 128, packing=True)
    assert [len(r["seq_lens"]) for r in packed] == [2, 2, 1]  # several per row, unequal rows: padding too
    pb = collate(packed, tiny_tokenizer.pad_token_id, True, minimal_mask=True, packed_mask=packed_mask)
    assert ("attention_mask" in pb) == (packed_mask == "4d")
    ub = collate(to_rows(pairs, 128, packing=False), tiny_tokenizer.pad_token_id, False)
    pl, ul = forward(tiny_model, pb), forward(tiny_model, ub)
    i = 0
    for r, row in enumerate(packed):
        start = 0
        for n in row["seq_lens"]:  # each example sees only itself: the same logits as alone
            torch.testing.assert_close(pl[r, start:start + n], ul[i, :n], rtol=1e-5, atol=1e-5)
            i += 1
            start += n
    torch.testing.assert_close(full_token_loss_sum(pl, pb["labels"]), full_token_loss_sum(ul, ub["labels"]),
                               rtol=1e-5, atol=1e-5)


def test_the_isolation_check_can_fail(tiny_tokenizer, tiny_model):
    """Positions that do not restart per example (and no mask) let examples see each other:
    the comparison above would catch it."""
    pairs = [(e.input_ids, e.labels) for e in (encode({"messages": m}, "chat", tiny_tokenizer, 128) for m in CHATS)]
    packed = to_rows(pairs, 128, packing=True)
    pb = collate(packed, tiny_tokenizer.pad_token_id, True, packed_mask="position_ids")
    n = pb["input_ids"].shape[1]
    leaky = dict(pb, position_ids=torch.arange(n).expand_as(pb["position_ids"]).contiguous())
    ub = collate(to_rows(pairs, 128, packing=False), tiny_tokenizer.pad_token_id, False)
    second = packed[0]["seq_lens"][0]
    diff = (forward(tiny_model, leaky)[0, second:second + 3] - forward(tiny_model, ub)[1, :3]).abs().max()
    assert diff > 1e-3
