"""Token ids of a piece of text, without the tokenizer wrapper's per-call cost where that is safe.

A chat row is tokenized in several segments (see :mod:`.chat`), and ``tokenizer(text)`` spends
more time in transformers' argument handling than in the Rust tokenizer itself. For a fast
tokenizer whose backend has no truncation, padding or special-token splitting set (the wrapper
clears or sets them on each call; a ``tokenizer.json`` may ship defaults), the backend's own
``encode`` gives the same ids; otherwise the wrapper is called.
"""

from __future__ import annotations


def token_ids(text: str, tokenizer) -> list[int]:
    """``tokenizer(text, add_special_tokens=False)["input_ids"]``."""
    if not text:
        return []
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if (backend is not None and backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))):
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
