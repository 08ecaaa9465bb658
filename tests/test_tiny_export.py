"""The exported tiny-llama carries the chat template training used: the same rows either way."""

from __future__ import annotations

from lorafarm.data.formats import encode
from lorafarm.model.tiny import build_tokenizer, write_dir

CHAT = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Ahoy, matey!"}, {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Over the sea."}]


def test_exported_tokenizer_renders_and_encodes_chats_as_the_built_in_model(tmp_path):
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(write_dir(tmp_path / "tiny")))
    built_in = build_tokenizer()
    assert exported.chat_template and not getattr(built_in, "chat_template", None)
    a, b = encode({"messages": CHAT}, "chat", exported, 256), encode({"messages": CHAT}, "chat", built_in, 256)
    assert a.input_ids == b.input_ids and a.labels == b.labels and a.n_labels > 0
    prompt = exported.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nHello?\n<|assistant|>\n")
