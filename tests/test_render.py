"""``lorafarm.data.render``: the chat-template shortcut is checked against
``apply_chat_template`` before it is trusted, turned off when it differs, and checked again when
the tokenizer's template changes. (Its equality on 8 template families × 2 real tokenizers, row
for row, is tests/test_chat_masks.py.)"""

from __future__ import annotations

import lorafarm.data.render as render

CHAT = [{"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "Arr."}]



def test_a_shortcut_that_differs_is_turned_off_and_the_real_render_returned(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    monkeypatch.setattr(tok, "chat_template", "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    monkeypatch.setattr(render, "_compiled", lambda *_a: lambda msgs: "not what the template says")
    for _ in range(render.CHECKS + 2):
        assert render.render_chat(CHAT, tok, None) == "[user] Ahoy?\n[assistant] Arr.\n"
    assert not render.shortcut_trusted(tok)


def test_a_new_template_is_checked_again(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    for template in ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}",
                     "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"):
        monkeypatch.setattr(tok, "chat_template", template)  # the session's tokenizer gets its own back
        texts = [render.render_chat(CHAT, tok, None) for _ in range(render.CHECKS + 2)]
        assert texts == [tok.apply_chat_template(CHAT, tokenize=False)] * len(texts)
        assert render.shortcut_trusted(tok)
