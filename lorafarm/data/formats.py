"""Turn one example into token ids and *pre-shifted* labels.

``labels[t]`` is the token position ``t`` must predict (``input_ids[t+1]`` of the same
example) or -100 for no loss; the last position is always -100. The loss is then plain
``cross_entropy(logits, labels)``, and a packed row never asks one example to predict the
next one's first token.

Loss masks: ``text`` trains on every token; ``prompt_completion`` on the completion and the
final eos; ``chat`` on assistant turns only (content plus its end token).

Chat rendering uses the tokenizer's own ``chat_template`` when it has one (assistant spans
found by rendering growing prefixes and mapping characters to tokens; neither the assistant
header, even of an opening assistant turn, nor whitespace the template puts after a turn's end
token is trained, as with the built-in template). Otherwise the
built-in template, rendered turn by turn::

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}</s>\\n

where ``</s>`` is the tokenizer's eos token and only ``{content}</s>`` of assistant turns
carries labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec import DatasetSpec

IGNORE = -100
FORMAT_VERSION = 2  # bump when encode() gives other rows for the same input: it keys the tokenization cache


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode(example: dict[str, Any], spec: DatasetSpec | str, tokenizer, seq_len: int) -> Encoded:
    fmt = spec if isinstance(spec, str) else spec.format
    if fmt == "text":
        pieces = [(example["text"], True)]
    elif fmt == "prompt_completion":
        pieces = [(example["prompt"], False), (example["completion"], True)]
    elif getattr(tokenizer, "chat_template", None):
        ids, targets = _chat_with_template(example["messages"], tokenizer)
        return _finish(ids, targets, seq_len)
    else:
        pieces = _builtin_chat_pieces(example["messages"])
    ids: list[int] = []
    targets: list[bool] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        targets.append(False)
    for text, trained in pieces:
        if text is _EOS:
            ids.append(tokenizer.eos_token_id)
            targets.append(trained)
            continue
        toks = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids.extend(toks)
        targets.extend([trained] * len(toks))
    if fmt != "chat":
        ids.append(tokenizer.eos_token_id)
        targets.append(True)
    return _finish(ids, targets, seq_len)


_EOS = object()


def _builtin_chat_pieces(messages: list[dict[str, str]]) -> list[tuple[Any, bool]]:
    pieces: list[tuple[Any, bool]] = []
    for m in messages:
        pieces.append((f"<|{m['role']}|>\n", False))
        if m["role"] == "assistant":
            pieces += [(m["content"], True), (_EOS, True), ("\n", False)]
        else:
            pieces.append((m["content"] + "\n", False))
    return pieces


def _chat_with_template(messages: list[dict[str, str]], tokenizer) -> tuple[list[int], list[bool]]:
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if i:  # after the conversation so far plus the assistant header
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        else:  # no empty conversation to render (transformers refuses it): the content's own offset
            start = max(0, full.rfind(m["content"], 0, end))
        while end > start and full[end - 1].isspace():  # the newline after the end token is template glue
            end -= 1
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    targets = [any(s <= a < e for s, e in spans) for a, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), targets


def _finish(ids: list[int], targets: list[bool], seq_len: int) -> Encoded:
    truncated = len(ids) > seq_len
    ids, targets = ids[:seq_len], targets[:seq_len]
    labels = [ids[t + 1] if targets[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Encoded(ids, labels, truncated)
