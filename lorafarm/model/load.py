"""Resolve ``base_model`` to a local Hugging Face directory and load it.

Nothing is downloaded at run time: a built-in name is materialised from code, an ``s3://``
directory is copied once into the local cache, and a hub id must already be in the local
Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ModelError
from ..storage import filesystem, is_remote
from . import tiny

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def cache_root() -> Path:
    base = os.environ.get("LORAFARM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lorafarm"
    )
    return Path(base)


def _marker_dir(path: Path) -> bool:
    return (path / ".complete").exists()


def resolve_base(base_model: str) -> Path:
    """A local directory holding the base's config, weights and tokenizer."""
    if base_model == tiny.TINY_NAME:
        out = cache_root() / "models" / f"{tiny.TINY_NAME}-seed{tiny.TINY_SEED}-b{tiny.TINY_BUILD}"
        if not _marker_dir(out):
            _materialise(out, tiny.write_dir)
        return out
    if is_remote(base_model):
        key = hashlib.sha256(base_model.encode()).hexdigest()[:16]
        out = cache_root() / "models" / f"remote-{key}"
        if not _marker_dir(out):
            _materialise(out, lambda d: _copy_remote(base_model, d))
        return out
    local = Path(os.path.expanduser(base_model.removeprefix("file://")))
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelError(
                f"base_model: {base_model} has no config.json — point it at a Hugging Face model directory"
            )
        return local.resolve()
    if base_model.startswith(("/", ".", "~")) or os.sep in base_model and base_model.count("/") > 1:
        raise ModelError(f"base_model: directory {base_model} not found — check the path")
    return _from_hub_cache(base_model)


def _materialise(out: Path, write) -> None:
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    write(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its copy is equal
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _copy_remote(uri: str, dest: Path) -> None:
    fs, root = filesystem(uri)
    try:
        entries = fs.find(root)
    except FileNotFoundError:
        entries = []
    if not entries:
        raise ModelError(f"base_model: nothing found at {uri} — check the URI and credentials")
    for entry in entries:
        rel = entry[len(root) :].lstrip("/")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(entry, str(target))
    if not (dest / "config.json").exists():
        raise ModelError(f"base_model: {uri} has no config.json — point it at a Hugging Face model directory")


def _from_hub_cache(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not in the local cache"
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelError(
            f"base_model: {repo_id!r} is not a built-in model, a local directory, or in the local Hugging Face "
            f"cache ({home}); lorafarm never downloads at run time — download it beforehand "
            f"(`hf download {repo_id}`), or set base_model to a local or s3:// model directory"
        ) from None


def weights_digest(model_dir: Path) -> str:
    """sha256 over the weight files (name + bytes), cached beside the files by size and mtime."""
    files = sorted(p for p in model_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    stamp = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    cache = cache_root() / "digests" / (hashlib.sha256(f"{model_dir}|{stamp}".encode()).hexdigest()[:24])
    if cache.exists():
        return cache.read_text()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(digest)
    return digest


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def attn_implementation() -> str:
    """``sdpa`` (PyTorch's fused attention; CPU and GPU), or what ``LORAFARM_ATTN_IMPLEMENTATION``
    names (``flash_attention_2`` on a GPU with flash-attn installed: packed rows then go by position
    ids through its variable-length kernel, see :mod:`lorafarm.data.collate`; ``eager``)."""
    return os.environ.get("LORAFARM_ATTN_IMPLEMENTATION") or "sdpa"


def load_base(model_dir: Path, dtype=None, gradient_checkpointing: bool = False, trust_remote_code: bool = False):
    """The frozen base model: every parameter has ``requires_grad=False``."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype or torch.float32, attn_implementation=attn_implementation(),
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:  # noqa: BLE001 - narrowed below: an unreadable or corrupt weights file
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(f"base_model: the weights in {model_dir} cannot be loaded ({type(e).__name__}: {first}) "
                         "— re-export or re-download the model") from None
    model.requires_grad_(False)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model
