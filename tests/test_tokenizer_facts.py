"""``lorafarm.data.tokenizer_facts``: the facts read once per tokenizer are those the tokenizer
has now — a tokenizer given a new end-of-sequence token or new special tokens, or re-templated,
is seen on the next call (the test fails when the cached facts are never read again)."""

from __future__ import annotations

import copy

from lorafarm.data.tokenizer_facts import _read, facts, fingerprint


def _fresh(tok):
    return _read(tok, fingerprint(tok))


def test_facts_are_the_tokenizers_and_follow_its_changes(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)  # the fixture's tokenizer is shared: change a copy
    first = facts(tok)
    assert first == _fresh(tok) and first.eos_token == tok.eos_token and first.eos_token_id == tok.eos_token_id
    assert facts(tok) is first  # read once while nothing changes
    assert list(first.specials) == sorted(first.specials, key=len, reverse=True)

    tok.add_special_tokens({"eos_token": "<|end_of_turn|>"})
    now = facts(tok)
    assert now is not first and now.eos_token == "<|end_of_turn|>" and "<|end_of_turn|>" in now.specials
    assert now.eos_token_id == tok.convert_tokens_to_ids("<|end_of_turn|>")

    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert "<|tool|>" in facts(tok).specials

    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    assert facts(tok).fingerprint != now.fingerprint

