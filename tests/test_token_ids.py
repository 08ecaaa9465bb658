"""``lorafarm.data.token_ids``: the backend shortcut gives exactly the wrapper's ids, and steps
aside when the backend carries state the wrapper would have cleared (truncation, padding)."""

from __future__ import annotations

from lorafarm.data.token_ids import token_ids

TEXTS = ["", "Arr, matey!", "  leading spaces\nand a newline", "</s> a special token inside", "é ✓ 日本語 🦜",
         "x" * 3000]


def _wrapper(text, tok):
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def test_the_shortcut_equals_the_wrapper(tiny_tokenizer):
    assert tiny_tokenizer.is_fast
    for text in TEXTS:
        assert token_ids(text, tiny_tokenizer) == _wrapper(text, tiny_tokenizer), text


def test_state_left_on_the_backend_by_another_call_is_not_applied(tiny_tokenizer):
    tok = tiny_tokenizer
    long = "a much longer text than four tokens"
    assert len(tok(long, truncation=True, max_length=4, add_special_tokens=False)["input_ids"]) == 4
    assert tok._tokenizer.truncation is not None  # the wrapper leaves it set until its next call
    assert token_ids(long, tok) == _wrapper(long, tok) and len(token_ids(long, tok)) > 4
    short = "ahoy"
    tok(short, padding="max_length", max_length=64, add_special_tokens=False)
    assert tok._tokenizer.padding is not None
    assert token_ids(short, tok) == _wrapper(short, tok) and len(token_ids(short, tok)) < 64
