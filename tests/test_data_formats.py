"""The three dataset formats and their loss masks (text, prompt/completion, chat with the built-in
or a Hugging Face chat template), labels pre-shifted, truncation to seq_len."""

from __future__ import annotations

import pytest
from data_helpers import (
    CHAT,
    CHATML,
    trained_text,
)

from lorafarm.data import (
    IGNORE,
    encode,
)
from lorafarm.model.tiny import build_tokenizer


@pytest.fixture
def chatml_tok():
    t = build_tokenizer()
    t.chat_template = CHATML
    return t


def assert_pre_shifted(enc) -> None:
    """labels[t] is input_ids[t+1] or IGNORE; the last position never carries a label."""
    assert len(enc.labels) == len(enc.input_ids)
    assert enc.labels[-1] == IGNORE
    for t, label in enumerate(enc.labels[:-1]):
        assert label in (IGNORE, enc.input_ids[t + 1]), t


def test_text_trains_every_token_after_bos(tiny_tokenizer):
    enc = encode({"text": "hello world"}, "text", tiny_tokenizer, 64)
    assert enc.input_ids == [tiny_tokenizer.bos_token_id, *tiny_tokenizer("hello world", add_special_tokens=False)["input_ids"],
                             tiny_tokenizer.eos_token_id]
    assert enc.labels == enc.input_ids[1:] + [IGNORE]
    assert enc.n_labels == len("hello world") + 1 and not enc.truncated
    assert_pre_shifted(enc)


def test_prompt_completion_trains_only_the_completion_and_eos(tiny_tokenizer):
    enc = encode({"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "prompt_completion", tiny_tokenizer, 64)
    assert trained_text(tiny_tokenizer, enc) == " 4</s>"
    n_prompt = 1 + len("Q: 2+2?\nA:")  # bos + prompt bytes
    # the last prompt position predicts the first completion token; nothing before it has a label
    assert all(x == IGNORE for x in enc.labels[: n_prompt - 1])
    assert enc.labels[n_prompt - 1] == enc.input_ids[n_prompt] == tiny_tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    assert enc.n_labels == 3
    assert_pre_shifted(enc)


def test_chat_builtin_template_trains_only_assistant_turns(tiny_tokenizer):
    assert not getattr(tiny_tokenizer, "chat_template", None)
    enc = encode({"messages": CHAT}, "chat", tiny_tokenizer, 512)
    assert tiny_tokenizer.decode(enc.input_ids) == (
        "<s><|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\nAhoy.</s>\n<|user|>\nBye\n<|assistant|>\nArr!</s>\n"
    )
    assert trained_text(tiny_tokenizer, enc) == "Ahoy.</s>Arr!</s>"
    assert enc.n_labels == len("Ahoy.") + 1 + len("Arr!") + 1
    assert_pre_shifted(enc)
    # the labelled positions are exactly those whose next token lies inside an assistant turn
    first = 1 + len("<|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\n")  # bos + one token per byte
    assert tiny_tokenizer.decode(enc.input_ids[first : first + 5]) == "Ahoy."
    assert enc.labels[first - 1] == enc.input_ids[first] and enc.labels[first - 2] == IGNORE


def test_chat_with_hf_chat_template_trains_only_assistant_turns(chatml_tok):
    enc = encode({"messages": CHAT}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids) == chatml_tok.apply_chat_template(CHAT, tokenize=False)
    # content plus the turn's end marker; headers, user/system turns and the newline glue are not trained
    assert trained_text(chatml_tok, enc) == "Ahoy.<|im_end|>Arr!<|im_end|>"
    assert_pre_shifted(enc)


def test_chat_with_template_first_message_from_assistant(chatml_tok):
    msgs = [{"role": "assistant", "content": "Ahoy!"}, {"role": "user", "content": "Hi"}]
    enc = encode({"messages": msgs}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids).startswith("<|im_start|>assistant\nAhoy!")
    assert trained_text(chatml_tok, enc) == "Ahoy!<|im_end|>"  # the header is not trained, as in later turns
    # the content also occurs in a preamble the template adds: the span is still the turn's own
    chatml_tok.chat_template = "Say Ahoy! back.\n" + CHATML
    enc = encode({"messages": msgs}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids).startswith("Say Ahoy! back.\n<|im_start|>assistant\nAhoy!")
    assert trained_text(chatml_tok, enc) == "Ahoy!<|im_end|>"


def test_truncation_cuts_to_seq_len_and_keeps_labels_pre_shifted(tiny_tokenizer):
    enc = encode({"text": "x" * 100}, "text", tiny_tokenizer, 16)
    assert len(enc.input_ids) == 16 and enc.truncated
    assert enc.labels == enc.input_ids[1:] + [IGNORE] and enc.n_labels == 15
    # a prompt longer than seq_len leaves nothing to learn
    lost = encode({"prompt": "p" * 40, "completion": "c"}, "prompt_completion", tiny_tokenizer, 16)
    assert lost.truncated and lost.n_labels == 0
    exact = encode({"text": "abc"}, "text", tiny_tokenizer, 5)  # bos + 3 + eos fits exactly
    assert not exact.truncated and exact.n_labels == 4
