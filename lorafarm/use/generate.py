"""``lorafarm try``: the same prompts through the base and through each adapter at each scale.

Prompts are rendered the way the job's training data was: a chat job's prompt becomes a user
turn in the tokenizer's chat template, or in the built-in one of :mod:`lorafarm.data.formats`
(``<|user|>\\n{prompt}\\n<|assistant|>\\n``); prompt-completion and text jobs see the bare
prompt after the bos token. Generation is greedy by default (``temperature=0``), and sampling
is seeded per generation, so a run is reproducible.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import SpecError
from ..storage import filesystem
from .load import Session

Prompt = str | list[dict[str, str]]
MAX_PROMPTS_BYTES = 64 << 20


def load_prompts(uri: str) -> list[Prompt]:
    """Prompts from a file: one a line (text), or JSON lines with ``prompt``/``text`` (a string)
    or ``messages`` (a chat; trailing assistant turns are dropped)."""
    fs, path = filesystem(uri)
    try:
        if fs.isdir(path):
            raise SpecError([f"--prompts: {uri} is a directory — give a text file (one prompt a line) or JSONL"])
        size = fs.size(path)
        if size is not None and size > MAX_PROMPTS_BYTES:
            raise SpecError([f"--prompts: {uri} is {size:,} bytes, over {MAX_PROMPTS_BYTES:,} — give a smaller "
                             "file of prompts"])
        with fs.open(path, "rb") as f:
            raw = f.read(MAX_PROMPTS_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"--prompts: {uri} not found — give a text file (one prompt a line) or JSONL"]) from None
    except OSError as e:
        raise SpecError([f"--prompts: {uri}: cannot read it ({e.strerror or e}) — give a readable text file"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"--prompts: {uri}: not UTF-8 text (byte {e.start}: {raw[e.start]:#04x}) — give a text "
                         "file (one prompt a line) or JSONL, saved as UTF-8"]) from None
    prompts: list[Prompt] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row: Any = line
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = line
        if isinstance(row, str):
            prompts.append(row)
        elif isinstance(row.get("prompt", row.get("text")), str):
            prompts.append(row.get("prompt", row.get("text")))
        elif isinstance(row.get("messages"), list):
            msgs = [m for m in row["messages"] if isinstance(m, dict)]
            if len(msgs) != len(row["messages"]) or not all(
                    isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
                raise SpecError([f"--prompts: {uri} line {n}: every message needs string 'role' and 'content'"])
            while msgs and msgs[-1].get("role") == "assistant":
                msgs.pop()
            if not msgs:
                raise SpecError([f"--prompts: {uri} line {n}: no user turn left to answer"])
            prompts.append([{"role": m["role"], "content": m["content"]} for m in msgs])
        else:
            raise SpecError([f"--prompts: {uri} line {n}: needs a 'prompt', 'text' or 'messages' field"])
    if not prompts:
        raise SpecError([f"--prompts: {uri} holds no prompts"])
    return prompts


def render_prompt(prompt: Prompt, fmt: str, tokenizer, system: str | None = None) -> list[int]:
    """Token ids of ``prompt`` as the job's format presented inputs during training."""
    ids: list[int] = []
    own_template = fmt == "chat" and getattr(tokenizer, "chat_template", None)
    if not own_template and tokenizer.bos_token_id is not None:  # a template renders its own bos
        ids.append(tokenizer.bos_token_id)
    if fmt != "chat":
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return ids + _tok(tokenizer, text)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _tok(tokenizer, text)
    for m in messages:  # the built-in template, piece by piece exactly as formats.encode does
        ids += _tok(tokenizer, f"<|{m['role']}|>\n")
        if m["role"] == "assistant":
            ids += _tok(tokenizer, m["content"]) + [tokenizer.eos_token_id] + _tok(tokenizer, "\n")
        else:
            ids += _tok(tokenizer, m["content"] + "\n")
    return ids + _tok(tokenizer, "<|assistant|>\n")


def _tok(tokenizer, text: str) -> list[int]:
    from ..data.token_ids import token_ids

    return token_ids(text, tokenizer)


def generate(session: Session, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0) -> list[int]:
    """The generated token ids (prompt excluded), stopping at eos."""
    import torch
    from transformers import GenerationConfig

    tok = session.tokenizer
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
        top_k=None, top_p=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, use_cache=True,
    )
    input_ids = torch.tensor([ids], dtype=torch.long, device=session.device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = session.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     generation_config=config)
    return out[0, len(ids):].tolist()


def decode(tokenizer, ids: list[int]) -> str:
    """Generated text; ids the tokenizer has no token for (a base's unused vocabulary rows, which
    an untrained model may well emit) show as ``<id>`` instead of vanishing."""
    text, run = [], []
    special = set(tokenizer.all_special_ids)
    for i in ids:
        if i in special:
            continue
        if tokenizer.convert_ids_to_tokens(i) is None:
            text.append(tokenizer.decode(run) if run else "")
            text.append(f"<{i}>")
            run = []
        else:
            run.append(i)
    text.append(tokenizer.decode(run) if run else "")
    return "".join(text)


def try_prompts(session: Session, prompts: list[Prompt], scales: list[float], max_new_tokens: int = 48,
                temperature: float = 0.0, seed: int = 0, system: str | None = None) -> list[dict[str, Any]]:
    """One record a prompt: the base's text, then one output per (adapter, scale)."""
    records = []
    base_fmt = session.adapters[0].format
    for prompt in prompts:
        with session.active(None):
            base = generate(session, render_prompt(prompt, base_fmt, session.tokenizer, system),
                            max_new_tokens, temperature, seed)
        outputs = []
        for adapter in session.adapters:
            ids = render_prompt(prompt, adapter.format, session.tokenizer, system)
            for scale in scales:
                with session.active(adapter, scale):
                    out = generate(session, ids, max_new_tokens, temperature, seed)
                outputs.append({"adapter": adapter.label, "uri": adapter.uri, "scale": scale,
                                "text": decode(session.tokenizer, out), "token_ids": out})
        records.append({"prompt": prompt, "base": decode(session.tokenizer, base), "base_token_ids": base,
                        "outputs": outputs})
    return records
