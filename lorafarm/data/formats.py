"""Turn one example into token ids and *pre-shifted* labels.

``labels[t]`` is the token position ``t`` must predict (``input_ids[t+1]`` of the same
example) or -100 for no loss; the last position is always -100. The loss is then plain
``cross_entropy(logits, labels)``, and a packed row never asks one example to predict the
next one's first token.

Loss masks: ``text`` trains on every token; ``prompt_completion`` on the completion and the
final eos; ``chat`` on assistant turns only (content plus its end token).

Chat rendering (the tokenizer's ``chat_template``, or a built-in one) and its masks are
:mod:`lorafarm.data.chat`: exactly each reply's tokens plus the template's end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec import DatasetSpec
from .chat import encode_chat
from .token_ids import token_ids
from .tokenizer_facts import facts

IGNORE = -100
FORMAT_VERSION = 3  # bump when encode() gives other rows for the same input: it keys the tokenization cache


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_labels(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE)


def encode(example: dict[str, Any], spec: DatasetSpec | str, tokenizer, seq_len: int) -> Encoded:
    fmt = spec if isinstance(spec, str) else spec.format
    if fmt == "text":
        pieces = [(example["text"], True)]
    elif fmt == "prompt_completion":
        pieces = [(example["prompt"], False), (example["completion"], True)]
    else:
        ids, targets = encode_chat(example["messages"], tokenizer, example.get("source_row") or "a chat example")
        return _finish(ids, targets, seq_len)
    ids: list[int] = []
    targets: list[bool] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        targets.append(False)
    for text, trained in pieces:
        toks = token_ids(text, tokenizer)
        ids.extend(toks)
        targets.extend([trained] * len(toks))
    ids.append(facts(tokenizer).eos_token_id)
    targets.append(True)
    return _finish(ids, targets, seq_len)


def _finish(ids: list[int], targets: list[bool], seq_len: int) -> Encoded:
    truncated = len(ids) > seq_len
    ids, targets = ids[:seq_len], targets[:seq_len]
    labels = [i if trained else IGNORE for i, trained in zip(ids[1:], targets[1:], strict=True)]
    labels.append(IGNORE)
    return Encoded(ids, labels, truncated)
