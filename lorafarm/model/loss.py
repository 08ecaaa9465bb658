"""The training loss without the full ``[tokens, vocab]`` logits.

With a large vocabulary (Llama 3: 128,256) the logits are the largest activation of a step:
one 2048-token row is 1 GB in fp32, and cross-entropy's backward holds as much again. Here the
model body runs as usual, but the output head sees no position (``logits_to_keep`` = an empty
index), and the loss is computed from the body's last hidden states: only the positions that
carry a label (``labels != -100``, so prompt, padding and packing boundaries cost nothing),
``chunk_tokens`` of them at a time, each chunk's head + cross-entropy under
:func:`torch.utils.checkpoint.checkpoint` so its logits are freed after the forward and rebuilt
one chunk at a time in backward. Peak memory is then one chunk's logits, whatever the sequence.

The result is the same number as the full path: the *sum* of per-token cross-entropy over label
tokens (the recipe normalises by the global batch's label-token count, unchanged), with the
same gradients (each token's logits are the same matmul; only the order of the final sum
differs, ~1e-7 relative in fp32).

The loss is attached to the model's output (``output["loss"]``) by a forward hook on the
top module, so it comes out of ``engine(...)`` itself: DeepSpeed registers its backward
hooks (ZeRO's gradient-accumulation boundary, reduction prologue) on the forward's outputs,
and a loss computed outside them would bypass those hooks.

Models whose head does more than a plain linear layer (logit soft-capping, scaling) or whose
``forward`` takes no ``logits_to_keep`` use the full-logits path; so does
``LORAFARM_LOSS_CHUNK_TOKENS=0`` (the reference the tests compare against).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
# Logit elements per chunk (fp32: 64 MiB): with vocabulary 128,256 that is 130 tokens a chunk; a small
# vocabulary (tiny-llama: 320) fits any micro batch in one chunk, computed without recompute.
LOGITS_BUDGET = 1 << 24
MIN_CHUNK_TOKENS = 64
ENV_CHUNK_TOKENS = "LORAFARM_LOSS_CHUNK_TOKENS"
# model types whose logits are exactly ``lm_head(final hidden states)`` (no soft-cap or scale)
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
                               "olmo", "olmo2", "gemma", "starcoder2"})


def full_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """The reference: sum of per-token cross-entropy over all label tokens from full logits
    (labels are pre-shifted: ``labels[i]`` is the token after ``input_ids[i]``); ``per_row``:
    one sum per batch row (a co-training pack weights each member's rows by its own batch)."""
    logits = logits.float()
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="none" if per_row else "sum")
    return flat.reshape(labels.shape).sum(1) if per_row else flat


def chunk_tokens_for(vocab_size: int) -> int:
    """Label tokens per chunk: ``LORAFARM_LOSS_CHUNK_TOKENS`` when set (0 = the full-logits
    path), else as many as keep one chunk's logits within :data:`LOGITS_BUDGET` elements."""
    env = os.environ.get(ENV_CHUNK_TOKENS)
    if env is not None and env.strip() != "":
        return max(0, int(env))
    return max(MIN_CHUNK_TOKENS, LOGITS_BUDGET // max(1, vocab_size))


def chunked_token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                           chunk_tokens: int, per_row: bool = False) -> torch.Tensor:
    """Sum of per-token cross-entropy over label tokens of ``head(hidden)``, ``chunk_tokens``
    label positions at a time; never more than one chunk's logits alive. ``per_row``: one sum
    per batch row."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1).to(flat.device)
    keep = torch.nonzero(y != IGNORE).squeeze(1)  # one host sync on an accelerator, per micro batch
    h, y = flat.index_select(0, keep), y.index_select(0, keep)
    row = keep // labels.shape[-1] if per_row else None
    n = h.shape[0]
    if n <= chunk_tokens:  # one chunk: nothing to free early, so no recompute either
        return _head_ce(h, y, head, row, labels.shape[0])
    total = None
    for s in range(0, n, chunk_tokens):
        part = checkpoint(_head_ce, h[s:s + chunk_tokens], y[s:s + chunk_tokens], head,
                          None if row is None else row[s:s + chunk_tokens], labels.shape[0], use_reentrant=False)
        total = part if total is None else total + part
    return total


def _head_ce(h: torch.Tensor, y: torch.Tensor, head: torch.nn.Module, row: torch.Tensor | None,
             rows: int) -> torch.Tensor:
    """The chunk's summed cross-entropy, or (``row``: each token's batch row) one sum per row."""
    if row is None:
        return F.cross_entropy(head(h).float(), y, reduction="sum")
    ce = F.cross_entropy(head(h).float(), y, reduction="none")
    return torch.zeros(rows, dtype=ce.dtype, device=ce.device).index_add(0, row, ce)


def _causal_lm(model):
    """The Hugging Face ``*ForCausalLM`` inside a PEFT wrapper (or the model itself)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner


class TokenLoss:
    """``loss(forward, inputs)``: the summed token cross-entropy of one micro batch, chunked
    when the model allows it. Install once per model (it adds two forward hooks that do
    nothing outside a call); ``forward`` is the model itself or the DeepSpeed engine around it."""

    def __init__(self, model, chunk_tokens: int | None = None):
        import inspect

        lm = _causal_lm(model)
        cfg = getattr(lm, "config", None)
        vocab = int(getattr(cfg, "vocab_size", 0) or 0)
        self.chunk_tokens = chunk_tokens_for(vocab) if chunk_tokens is None else chunk_tokens
        body = lm.get_decoder() if hasattr(lm, "get_decoder") else None
        self.head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        plain = getattr(cfg, "model_type", None) in PLAIN_HEAD_MODELS
        takes_keep = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self.chunked = bool(self.chunk_tokens > 0 and plain and takes_keep and body is not None
                            and self.head is not None)
        self._labels: torch.Tensor | None = None
        self._per_row = False
        self._hidden: torch.Tensor | None = None
        if self.chunked:
            body.register_forward_hook(self._grab_hidden)
            model.register_forward_hook(self._attach_loss)

    def __call__(self, forward, inputs: dict[str, torch.Tensor], per_row: bool = False) -> torch.Tensor:
        """The micro batch's summed token cross-entropy; ``per_row``: one sum per row."""
        kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        if not self.chunked:
            return full_token_loss_sum(forward(**kwargs, use_cache=False).logits, inputs["labels"], per_row)
        self._labels = inputs["labels"]
        self._per_row = per_row
        try:
            out = forward(**kwargs, use_cache=False,
                          logits_to_keep=torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device))
            return out["loss"]
        finally:
            self._labels = self._hidden = None

    def _grab_hidden(self, module, args, output) -> None:
        if self._labels is not None:
            self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def _attach_loss(self, module, args, output: Any):
        if self._labels is None:
            return None
        if self._hidden is None:
            raise RuntimeError("chunked loss: the model body's hidden states were not seen — set "
                               f"{ENV_CHUNK_TOKENS}=0 to use the full-logits loss")
        output["loss"] = chunked_token_loss_sum(self._hidden, self._labels, self.head, self.chunk_tokens,
                                                self._per_row)
        return output
