"""Chat examples as token ids and targets, from the ONE full render of the conversation.

A template may change earlier turns depending on later ones (Mistral v0.3 moves the system
prompt into the last user turn, Qwen3 adds an empty think block to the last assistant turn
only), so renders of shorter conversations are not prefixes of the full one and say nothing
about where a reply sits in it. Instead the conversation is rendered twice: as it is, and with
every assistant content replaced by a unique marker. The marked render splits into the
template's own text around the replies (its "glue"); the real render must be that glue with
each reply in between, which locates every reply exactly, or the row is reported.

The text is then tokenized segment by segment, so no token straddles prompt and reply (with
``[/INST]`` right before a reply, SentencePiece would merge ``].``; byte-level BPE merges
newlines): prompt segments as they continue the chat at inference (no SentencePiece dummy
``▁`` in the middle of a conversation), each trained segment on its own, as generated. A
trained segment is the reply (with the spaces the template writes right before it, which
the model generates as part of its first token) plus the template's end-of-turn token (eos,
``<|im_end|>``, ``<|eot_id|>`` ...: a special token that follows the reply after at most
whitespace, see :func:`_end_of_turn`); nothing of the glue after that token, and no assistant header, is trained.

A tokenizer without a chat template gets :data:`BUILTIN_TEMPLATE`::

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}</s>\\n
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import DataError
from .render import render_chat
from .token_ids import token_ids
from .tokenizer_facts import TokenizerFacts, facts

BUILTIN_TEMPLATE = (  # newlines as expressions: transformers renders templates with trim_blocks
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_MARK = "\u27eblorafarm-reply-{}\u27ea"  # ⟫…⟪: never part of a template's own text


def encode_chat(messages: list[dict[str, str]], tokenizer, where: str) -> tuple[list[int], list[bool]]:
    """(ids, targets) of one conversation; ``where`` names the row in a :class:`DataError`."""
    full, segments = chat_segments(messages, tokenizer, where)
    known = facts(tokenizer)
    ids: list[int] = []
    targets: list[bool] = []
    for k, (start, end, trained) in enumerate(segments):
        toks = _tokenize(full[start:end], tokenizer, known, continued=k > 0 and not trained)
        ids += toks
        targets += [trained] * len(toks)
    return ids, targets


def chat_segments(messages: list[dict[str, str]], tokenizer, where: str) -> tuple[str, list[tuple[int, int, bool]]]:
    """The full render and its (start, end, trained) character segments, covering it in order."""
    full, replies = _locate_replies(messages, tokenizer, where)
    specials = facts(tokenizer).specials  # longest first, so ``</s>`` never shadows a longer one
    segments: list[tuple[int, int, bool]] = []
    done = 0
    for start, end, glue_end in replies:
        while start > done and full[start - 1] == " ":
            start -= 1
        end = _end_of_turn(full, end, glue_end, specials)
        segments += [(done, start, False), (start, end, True)]
        done = end
    segments.append((done, len(full), False))
    return full, [s for s in segments if s[1] > s[0]]


def _render(messages: list[dict[str, str]], tokenizer, where: str) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else BUILTIN_TEMPLATE
    try:
        return render_chat(messages, tokenizer, template)
    except Exception as e:  # noqa: BLE001 - a template raises what it likes (raise_exception, jinja errors)
        raise DataError(f"{where}: the chat template refuses this conversation ({e}) — fix the row's roles "
                        "or order, or the tokenizer's chat_template") from None


def _locate_replies(messages: list[dict[str, str]], tokenizer, where: str) -> tuple[str, list[tuple[int, int, int]]]:
    """The full render and, per assistant turn, (reply start, reply end, end of the glue after it)."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    marks = [_MARK.format(k) for k in range(len(turns))]
    if any(mark in m["content"] for mark in marks for m in messages):
        raise DataError(f"{where}: a message contains lorafarm's reply marker {marks[0]!r} — remove it")
    marked = [dict(m, content=marks[turns.index(i)]) if i in turns else m for i, m in enumerate(messages)]
    skeleton = _render(marked, tokenizer, where)
    full = _render(messages, tokenizer, where)
    for i, m in enumerate(messages):
        text = m["content"].strip()
        if m["role"] != "assistant" and text and text not in skeleton:
            raise DataError(f"{where}: the chat template drops message {i} ({m['role']}) from this conversation "
                            "(which ends with an assistant turn, as a training row does), so the model would learn "
                            "the replies without it — use a template that renders it (e.g. put the system prompt "
                            "into the first user message)")
    glue = _split(skeleton, marks, messages, turns, where)
    if not (full.startswith(glue[0]) and full.endswith(glue[-1])):
        raise _unlocated(where, turns[0])
    replies = []
    pos, last = len(glue[0]), len(full) - len(glue[-1])
    for k, i in enumerate(turns):
        content = messages[i]["content"]
        if k == len(turns) - 1:
            end = last if last >= pos and full[pos:last] in content else -1
        else:
            end = full.find(glue[k + 1], pos)
            while end != -1 and end - pos <= len(content) and full[pos:end] not in content:
                end = full.find(glue[k + 1], end + 1)
            if end - pos > len(content):
                end = -1
        if end == -1:
            raise _unlocated(where, i)
        if content.strip() and not full[pos:end].strip():
            raise DataError(f"{where}: the chat template drops the content of message {i} (assistant), so it "
                            "cannot be trained — use a template that renders every assistant turn")
        replies.append((pos, end, end + len(glue[k + 1])))
        pos = end + len(glue[k + 1])
    if pos != len(full):
        raise _unlocated(where, turns[-1])
    return full, replies


def _split(skeleton: str, marks: list[str], messages, turns: list[int], where: str) -> list[str]:
    """The template's text around the markers: ``glue[k]`` precedes reply k, ``glue[-1]`` ends the chat."""
    glue, rest = [], skeleton
    for k, mark in enumerate(marks):
        if skeleton.count(mark) != 1 or mark not in rest:
            what = "drops or rewrites" if mark not in skeleton else "repeats or reorders"
            raise DataError(f"{where}: the chat template {what} message {turns[k]} (assistant), so its reply cannot "
                            "be located for the loss mask — use a template that renders each assistant turn once")
        before, rest = rest.split(mark, 1)
        glue.append(before)
    glue.append(rest)
    return glue


def _unlocated(where: str, i: int) -> DataError:
    return DataError(f"{where}: the chat template rewrites message {i} (assistant) beyond trimming it, so the "
                     "trained tokens cannot be located — use a template that renders assistant content as written")


def _end_of_turn(full: str, end: int, glue_end: int, specials: tuple[str, ...]) -> int:
    """Where the trained segment ends: after the special token that closes the reply (after at
    most whitespace); else after a closing marker the tokenizer does not know as a token (e.g.
    ``<|im_end|>`` on a byte-level vocabulary) that the template writes right after the reply and
    before whitespace; else at the reply's end."""
    at = end
    while at < glue_end and full[at].isspace():
        at += 1
    for token in specials:
        if full.startswith(token, at) and at + len(token) <= glue_end:
            return at + len(token)
    marker = re.match(r"\S+(?=\s|$)", full[end:glue_end])
    return end + marker.end() if marker else end


def _tokenize(text: str, tokenizer, known: TokenizerFacts, *, continued: bool) -> list[int]:
    """Token ids of ``text`` (``known``: the tokenizer's facts). ``continued``: as it tokenizes in
    the middle of a chat, i.e. after a special token, so a SentencePiece tokenizer adds no
    dummy-prefix ``▁`` (it does at a start)."""
    if not text:
        return []
    anchor: Any = known.eos_token if continued else None
    if not anchor:
        return token_ids(text, tokenizer)
    ids = token_ids(anchor + text, tokenizer)
    if ids[:1] != [known.eos_token_id]:
        return token_ids(text, tokenizer)
    return ids[1:]
