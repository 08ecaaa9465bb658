"""The built-in ``tiny-llama``: a small Llama with random weights from a fixed seed and a
byte-level tokenizer built in code, so every machine gets the same bytes with no download."""

from __future__ import annotations

from pathlib import Path

TINY_NAME = "tiny-llama"
TINY_SEED = 1234
TINY_BUILD = 2  # bump when write_dir writes different files, so stale caches are rebuilt (2: chat_template.jinja)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3; bytes follow at 4..259
TINY_CONFIG = dict(
    vocab_size=320,  # 260 used, padded to a multiple of 64
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def build_tokenizer():
    """A byte-level tokenizer: one token per UTF-8 byte, plus pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    byte_chars.sort(key=lambda ch: _byte_of(ch))
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(byte_chars)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )


def _byte_of(ch: str) -> int:
    # GPT-2's byte→unicode map: printable bytes map to themselves, the rest to 256+.
    from functools import lru_cache

    @lru_cache(maxsize=1)
    def table() -> dict[str, int]:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return {chr(c): b for b, c in zip(bs, cs, strict=True)}

    return table()[ch]


def build_model(dtype=None):
    """The tiny Llama with weights drawn from ``TINY_SEED`` (same on every machine)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TINY_CONFIG)
    devices = torch.random.fork_rng(devices=[])
    with devices:
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    return model


def write_dir(out: Path) -> Path:
    """Write tiny-llama's files (config, safetensors, tokenizer) into the directory ``out``. The
    tokenizer carries the built-in chat template that training used, so ``apply_chat_template``
    on the exported model renders chats as the adapter was trained on them."""
    from ..data.chat import BUILTIN_TEMPLATE

    out.mkdir(parents=True, exist_ok=True)
    build_model().save_pretrained(out, safe_serialization=True)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = BUILTIN_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def export(directory: str | Path, force: bool = False) -> Path:
    """Write tiny-llama as a Hugging Face directory: ``directory`` must be new or empty (``force``:
    replaced whole); written beside it and renamed into place, with normal file modes."""
    from ..storage import check_output_dir, output_dir

    out = check_output_dir(directory, force, "DIR")
    with output_dir(out, force, "DIR") as tmp:
        write_dir(tmp)
    return out
