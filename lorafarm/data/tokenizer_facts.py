"""What the data path reads from a tokenizer for every row, read once per tokenizer state.

transformers serves special tokens through ``__getattr__`` (about 1 µs each), and the chat
encoder asked for them per row (the special-token list, the render shortcut's key) and per
segment (``eos_token``, ``eos_token_id``); with a large vocabulary's added tokens the list alone
costs tens of µs a row. :func:`facts` keeps them per tokenizer (weakly) and reads them again
whenever the tokenizer's *fingerprint* changes — its size, chat template and special-token map —
so a tokenizer that is re-templated or given new tokens is seen at once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenizerFacts:
    fingerprint: tuple
    specials: tuple[str, ...]  # special token texts, longest first (``</s>`` never shadows a longer one)
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    eos_token_id: int | None


_FACTS: weakref.WeakKeyDictionary[Any, TokenizerFacts] = weakref.WeakKeyDictionary()


def fingerprint(tokenizer) -> tuple:
    """What the facts depend on, cheap to read: transformers keeps the special tokens in one
    dict (read directly, not through ``__getattr__``); without it, the properties themselves."""
    tokens = getattr(tokenizer, "__dict__", {}).get("_special_tokens_map")
    if isinstance(tokens, dict):
        special = tuple(tokens.values())
    else:
        special = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    return (len(tokenizer), getattr(tokenizer, "chat_template", None), special)


def _read(tokenizer, key: tuple) -> TokenizerFacts:
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return TokenizerFacts(
        fingerprint=key, specials=tuple(sorted((t for t in found if t), key=len, reverse=True)),
        bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token, eos_token_id=tokenizer.eos_token_id,
    )


def facts(tokenizer) -> TokenizerFacts:
    """The tokenizer's facts as it is now."""
    key = fingerprint(tokenizer)
    try:
        known = _FACTS.get(tokenizer)
    except TypeError:  # cannot be weakly referenced: read every time
        return _read(tokenizer, key)
    if known is None or known.fingerprint != key:
        known = _FACTS[tokenizer] = _read(tokenizer, key)
    return known
