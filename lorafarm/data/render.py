"""A conversation rendered by the tokenizer's chat template, without ``apply_chat_template``'s
per-call overhead where that gives the same text.

Each chat row is rendered twice (see :mod:`.chat`), and ``apply_chat_template`` spends more time
rebuilding the special-token map and normalising the messages than jinja spends rendering. For
plain ``{role, content}`` string messages — all a dataset row can hold after the reader's check —
that normalisation changes nothing, so the compiled template (transformers' own cached
compilation, with its extensions and globals) is rendered directly with the same variables.
Per tokenizer and template, the first :data:`CHECKS` renders are done both ways and compared; a
difference, or a transformers without the compiled-template helper, turns the shortcut off.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .tokenizer_facts import fingerprint

CHECKS = 3  # renders per tokenizer and template compared with apply_chat_template before trusting the shortcut


class _Shortcut:
    __slots__ = ("checks_left", "render")

    def __init__(self, render: Callable[[list[dict[str, str]]], str] | None):
        self.render = render
        self.checks_left = CHECKS


_SHORTCUTS: weakref.WeakKeyDictionary[Any, dict[tuple, _Shortcut]] = weakref.WeakKeyDictionary()


def render_chat(messages: list[dict[str, str]], tokenizer, template: str | None) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)``."""
    try:
        per_key = _SHORTCUTS.setdefault(tokenizer, {})
        key = _key(tokenizer, template)
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: no shortcut
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    shortcut = per_key.get(key)
    if shortcut is None:
        shortcut = per_key[key] = _Shortcut(_compiled(tokenizer, template))
    if shortcut.render is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    if shortcut.checks_left > 0:
        text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
        try:
            same = shortcut.render(messages) == text
        except Exception:  # noqa: BLE001 - the shortcut fails where the real call did not: not used
            same = False
        shortcut.checks_left -= 1
        if not same:
            shortcut.render = None
        return text
    return shortcut.render(messages)


def shortcut_trusted(tokenizer, template: str | None = None) -> bool:
    """Whether renders for ``tokenizer`` as it is now go by the shortcut (its checks passed)."""
    shortcut = _SHORTCUTS.get(tokenizer, {}).get(_key(tokenizer, template))
    return shortcut is not None and shortcut.render is not None and shortcut.checks_left == 0


def _key(tokenizer, template: str | None) -> tuple:
    """What the shortcut's variables come from: a tokenizer whose template or special tokens
    change (tests re-template one tokenizer) gets a new shortcut, checked again."""
    return (template, fingerprint(tokenizer))  # its size, chat template and special tokens


def _compiled(tokenizer, template: str | None) -> Callable[[list[dict[str, str]]], str] | None:
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(tokenizer.get_chat_template(template, None))
        variables = dict(tokenizer.special_tokens_map)
    except Exception:  # noqa: BLE001 - another transformers: the plain call it is
        return None

    def render(messages: list[dict[str, str]]) -> str:
        return compiled.render(messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                               tools=None, documents=None, add_generation_prompt=False, **variables)

    return render
