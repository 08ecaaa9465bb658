"""Chat loss masks, row by row and by token id, under real tokenizers and real template families.

Tokenizers shipped by the ``mistral-common`` package (no download): Mistral-7B v0.1's
SentencePiece model and the Tekken byte-level BPE. Templates (tests/data/chat/*.jinja) are
the families' public ones. The reference is independent of the encoder: each reply as its
template renders it, plus the template's end-of-turn token, tokenized alone; a row's trained
ids must be exactly those runs, in order, and the rest of the row the template's prompt text.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import spec_for

from lorafarm.data import IGNORE, check_labels, encode
from lorafarm.data.formats import _finish
from lorafarm.data.render import shortcut_trusted
from lorafarm.errors import DataError

TEMPLATES = Path(__file__).parent / "data" / "chat"
N_ROWS = 60
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]


def _mistral_data() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """Mistral-7B v0.1's SentencePiece tokenizer (``▁`` dummy prefix, byte fallback)."""
    from transformers import LlamaTokenizer

    where = tmp_path_factory.mktemp("sp")
    shutil.copy(_mistral_data() / "tokenizer.model.v1", where / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(where))
    return _with_chat_tokens(tok)


@pytest.fixture(scope="module")
def byte_bpe():
    """Mistral's Tekken: a tiktoken-style byte-level BPE (131k tokens)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.mistral.tokenizer import MistralConverter

    backend = MistralConverter(str(_mistral_data() / "tekken_240718.json")).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return _with_chat_tokens(tok)


def _with_chat_tokens(tok):
    from tokenizers import AddedToken

    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])  # as in Qwen3
    return tok


def _qwen3_reply(content: str, last: bool) -> str:
    if "</think>" in content:
        content = content.split("</think>")[-1].lstrip("\n")
    return content.lstrip("\n") if last else content


@dataclass(frozen=True)
class Family:
    template: str  # file name under tests/data/chat
    eot: str  # the end-of-turn token after a reply ("" = the tokenizer's eos)
    reply: Callable[[str, bool], str]  # (content, last assistant turn) -> the reply as the template renders it
    system: bool = True  # takes a system message
    think: bool = False  # earlier replies may carry a <think> block the template strips

    def end(self, tok) -> str:
        return self.eot or tok.eos_token


FAMILIES = {
    "mistral_v01": Family("mistral_v01.jinja", "", lambda c, last: c, system=False),
    "mistral_v03": Family("mistral_v03.jinja", "", lambda c, last: " " + c.strip()),
    "mistral_v03_last_user": Family("mistral_v03_last_user.jinja", "", lambda c, last: " " + c.strip()),
    "chatml": Family("chatml.jinja", "<|im_end|>", lambda c, last: c),
    "qwen3": Family("qwen3.jinja", "<|im_end|>", _qwen3_reply, think=True),
    "llama3": Family("llama3.jinja", "<|eot_id|>", lambda c, last: c.strip()),
    "gemma": Family("gemma.jinja", "<end_of_turn>", lambda c, last: c.strip(), system=False),
    "phi3": Family("phi3.jinja", "<|end|>", lambda c, last: c, system=False),
}

WORDS = ["ahoy", "matey", "the", "ship", "sails", "at", "dawn", "über", "naïve", "café", "42", "3.14", "x_y",
         "don't", "C++", "λ", "日本", "🏴‍☠️", "e.g.", "foo()", "[1]", "{k: v}", "#tag", "--flag", "a/b"]
STARTS = [".", ",", "!", "?", "{", "(", "[", "]", "}", ")", "*", "-", "'", '"', ":", "\n", "\n\n", " ", "  ", "1.",
          "```python\n", "é", "😀", "Sure", "sure", "The", "I", "<", "\t", ""]


def _text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        out.append(rng.choice(WORDS))
        out.append(rng.choice([" ", " ", " ", "\n", ", ", ". ", "\n\n", "  "]))
    return "".join(out).rstrip() + rng.choice(["", ".", "!", "?", "\n", " ", ":"])


def conversations(name: str, family: Family, n: int = N_ROWS) -> list[list[dict[str, str]]]:
    """``n`` varied conversations (seeded by family name): 1-4 exchanges, some with a system
    message, replies starting with punctuation, newlines, spaces or a letter, ending in a reply."""
    rng = random.Random(name)
    convs = []
    for i in range(n):
        msgs = []
        if family.system and i % 4 == 1:
            msgs.append({"role": "system", "content": _text(rng, rng.randint(2, 8))})
        turns = rng.randint(1, 4)
        for t in range(turns):
            msgs.append({"role": "user", "content": _text(rng, rng.randint(1, 10))})
            reply = rng.choice(STARTS) + _text(rng, rng.randint(1, 12))
            if family.think and t < turns - 1 and rng.random() < 0.5:
                reply = "<think>\n" + _text(rng, 4) + "\n</think>\n\n" + reply
            if not reply.strip():
                reply += "ok"
            msgs.append({"role": "assistant", "content": reply})
        convs.append(msgs)
    return convs


def reference_runs(msgs: list[dict[str, str]], family: Family, tok) -> list[list[int]]:
    """Per reply: the reply as rendered plus the end-of-turn token, tokenized alone."""
    replies = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    return [tok(family.reply(msgs[i]["content"], i == replies[-1]) + family.end(tok), add_special_tokens=False)
            ["input_ids"] for i in replies]


def trained_runs(enc) -> list[list[int]]:
    """The trained token ids, as runs of consecutive target positions."""
    runs: list[list[int]] = []
    previous = False
    for label in enc.labels:
        trained = label != IGNORE
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(label)
        previous = trained
    return runs


def _use(tok, family: Family) -> None:
    tok.chat_template = (TEMPLATES / family.template).read_text()


def _has_system(msgs) -> bool:
    return msgs[0]["role"] == "system"


@pytest.mark.parametrize("tok_name", ["sentencepiece", "byte_bpe"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_row_trains_exactly_its_replies_and_end_of_turn_tokens(name, tok_name, request):
    tokenizer = request.getfixturevalue(tok_name)
    family = FAMILIES[name]
    _use(tokenizer, family)
    checked = 0
    for n, msgs in enumerate(conversations(name, family)):
        if name == "mistral_v03" and _has_system(msgs):
            continue  # its template drops the system prompt: reported, see the test below
        enc = encode({"messages": msgs, "source_row": f"row {n}"}, "chat", tokenizer, 4096)
        assert not enc.truncated
        assert trained_runs(enc) == reference_runs(msgs, family, tokenizer), f"{name} row {n}: {msgs}"
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        text = tokenizer.decode(enc.input_ids)
        if tok_name == "sentencepiece":  # a reply's dummy-prefix "▁" decodes as a space, or eats one
            text, full = text.replace(" ", ""), full.replace(" ", "")
        assert text == full, f"{name} row {n}: the untrained tokens are not the template's prompt text"
        checked += 1
    assert checked >= N_ROWS * 3 // 4
    assert shortcut_trusted(tokenizer)  # rendered by the compiled template directly after the first checks


def test_a_template_that_drops_the_system_prompt_is_reported_by_row(sentencepiece):
    family = FAMILIES["mistral_v03"]
    _use(sentencepiece, family)
    with_system = [m for m in conversations("mistral_v03", family) if _has_system(m)]
    assert with_system
    for msgs in with_system:
        with pytest.raises(DataError, match=r"^data\.jsonl:7: the chat template drops message 0 \(system\)"):
            encode({"messages": msgs, "source_row": "data.jsonl:7"}, "chat", sentencepiece, 4096)
    _use(sentencepiece, FAMILIES["phi3"])  # Phi-3's template has no system role at all
    with pytest.raises(DataError, match="drops message 0"):
        encode({"messages": with_system[0], "source_row": "r"}, "chat", sentencepiece, 4096)


def test_no_token_straddles_prompt_and_reply(sentencepiece, byte_bpe):
    """``[/INST].`` is one SentencePiece token in a plain render, ``\\n\\n`` one BPE token: the
    reply's first character is still the first trained token."""
    _use(sentencepiece, FAMILIES["mistral_v01"])
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ".done"}]
    enc = encode({"messages": msgs}, "chat", sentencepiece, 256)
    assert sentencepiece.decode(trained_runs(enc)[0]) == ".done</s>"
    _use(byte_bpe, FAMILIES["phi3"])
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nnext line"}]
    enc = encode({"messages": msgs}, "chat", byte_bpe, 256)
    assert byte_bpe.decode(trained_runs(enc)[0]) == "\nnext line<|end|>"


def test_a_template_that_rewrites_a_reply_is_reported(byte_bpe):
    byte_bpe.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper if m['role'] == "
                              "'assistant' else m['content'] }}{{ eos_token }}{% endfor %}")
    msgs = [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "ahoy"}]
    with pytest.raises(DataError, match="r9: the chat template drops or rewrites message 1"):
        encode({"messages": msgs, "source_row": "r9"}, "chat", byte_bpe, 256)
    byte_bpe.chat_template = ("{% for m in messages %}{{ m['content'] | replace('h', 'H') }}{{ eos_token }}"
                              "{% endfor %}")  # leaves the marker as it is
    with pytest.raises(DataError, match="r9: the chat template rewrites message 1"):
        encode({"messages": msgs, "source_row": "r9"}, "chat", byte_bpe, 256)


# The algorithm before issue 21, kept here to show these tests catch what it got wrong.
def _old_encode(messages, tokenizer, seq_len):
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if i:
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        else:
            start = max(0, full.rfind(m["content"], 0, end))
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    targets = [any(s <= a < e for s, e in spans) for a, _ in enc["offset_mapping"]]
    return _finish(list(enc["input_ids"]), targets, seq_len)


@pytest.mark.parametrize(("name", "tok_name"), [("mistral_v03_last_user", "byte_bpe"), ("qwen3", "byte_bpe"),
                                                ("mistral_v01", "sentencepiece")])
def test_the_old_prefix_render_algorithm_fails_these_checks(name, tok_name, request):
    tok = request.getfixturevalue(tok_name)
    family = FAMILIES[name]
    _use(tok, family)
    rows = conversations(name, family)
    wrong = sum(trained_runs(_old_encode(m, tok, 4096)) != reference_runs(m, family, tok) for m in rows)
    assert wrong >= 10, f"{name}: the old algorithm got {wrong} of {len(rows)} rows wrong"


def test_label_report_names_cut_rows_warns_and_refuses_when_nothing_is_left(tiny_tokenizer):
    spec = spec_for("unused.jsonl", "prompt_completion")
    rows = [{"prompt": "p" * (60 if i % 3 == 0 else 4), "completion": "c", "source_row": f"d.jsonl:{i + 1}"}
            for i in range(12)]
    encoded, report = check_labels(rows, spec, tiny_tokenizer, 32)
    assert len(encoded) == 12
    assert report.rows() == ["d.jsonl:1", "d.jsonl:4", "d.jsonl:7", "d.jsonl:10"]
    assert report.problems() == []
    (warning,) = report.warnings()
    assert warning.startswith("dataset: 4 of 12 examples (33.3%) lose all their labels and are dropped (d.jsonl:1; ")
    assert "the prompts fill the whole sequence (training.seq_len = 32)" in warning
    _, few = check_labels(rows[1:3] * 30 + rows[:1], spec, tiny_tokenizer, 32)
    assert few.rows() == ["d.jsonl:1"] and few.warnings() == []  # 1 of 61: below the warning share
    _, none_left = check_labels(rows[::3], spec, tiny_tokenizer, 32)
    assert none_left.problems() == ["dataset: every example loses all its labels — the prompts fill the whole "
                                    "sequence (training.seq_len = 32): raise training.seq_len or shorten the prompts"]


def test_label_report_lists_rows_a_template_cannot_mask(byte_bpe):
    _use(byte_bpe, FAMILIES["mistral_v03"])
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "ahoy"}]
    rows = [{"messages": system, "source_row": "c.jsonl:1"}, {"messages": system[1:], "source_row": "c.jsonl:2"}]
    _, strict = check_labels(rows, spec_for("c.jsonl", "chat"), byte_bpe, 64)
    (problem,) = strict.problems()
    assert problem.startswith("dataset: c.jsonl:1: the chat template drops message 0 (system)")
    assert problem.endswith("(or set dataset.on_bad_rows: skip to drop such rows)")
    _, lenient = check_labels(rows, spec_for("c.jsonl", "chat", on_bad_rows="skip"), byte_bpe, 64)
    assert lenient.problems() == [] and lenient.warnings()[0].startswith("dataset: 1 examples are skipped: c.jsonl:1")


def test_validate_and_prepare_refuse_a_dataset_whose_prompts_fill_the_sequence(tmp_path, tiny_tokenizer_dir):
    """validate (preflight) and run/submit (prepare, before any worker starts) say the same."""
    from helpers import quickstart_spec

    from lorafarm.data import prepare
    from lorafarm.errors import PreflightError
    from lorafarm.preflight import preflight
    from lorafarm.spec import validate_spec
    from lorafarm.storage import Store

    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "p" * 80},
                                                     {"role": "assistant", "content": "ok"}]}) + "\n"
                            for _ in range(8)))
    spec = validate_spec(quickstart_spec("demo", "long", data, training={"seq_len": 64}))
    fix = "the prompts fill the whole sequence (training.seq_len = 64): raise training.seq_len or shorten the prompts"
    with pytest.raises(PreflightError, match=re.escape(fix)):
        preflight(spec)
    with pytest.raises(DataError, match=re.escape(f"dataset: every example loses all its labels — {fix}")):
        prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "store")), parallel=False)
