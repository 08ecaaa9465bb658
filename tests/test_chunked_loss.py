"""The chunked loss (lorafarm.model.loss) is the full-logits loss: the same sum and the same
LoRA gradients on random inputs with label masks, padding and packed rows, at every chunk
size; its hooks change nothing outside a loss call; and the real recipe (DeepSpeed ZeRO-2, the
quickstart's LoRA) trains the same adapter with it as with the full logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorafarm.data import IGNORE, collate, to_rows
from lorafarm.model import apply_lora
from lorafarm.model.loss import LOGITS_BUDGET, TokenLoss, chunk_tokens_for, full_token_loss_sum
from lorafarm.model.tiny import build_model
from lorafarm.spec import LoraSpec

HERE = Path(__file__).resolve().parent
VOCAB = 320  # tiny-llama


def lora_model(dtype=torch.float32):
    torch.manual_seed(0)
    base = build_model().to(dtype)
    base.requires_grad_(False)
    model = apply_lora(base, LoraSpec(r=8, alpha=16, dropout=0.0, target_modules="all-linear"), seed=0)
    with torch.no_grad():  # B = 0 at init would make every LoRA-A gradient zero: nothing to compare
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # drawn in fp32, then cast: the same values in every dtype
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def random_rows(packing: bool, seed: int = 0) -> list[dict]:
    """Examples of random lengths with a random prompt part masked out (-100)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(7):
        n = int(torch.randint(5, 40, (1,), generator=g))
        ids = torch.randint(4, VOCAB, (n,), generator=g).tolist()
        prompt = int(torch.randint(1, n // 2 + 1, (1,), generator=g))
        labels = [IGNORE] * prompt + ids[prompt + 1:] + [IGNORE]  # pre-shifted, last has no next token
        examples.append((ids, labels[:n]))
    return to_rows(examples, 64, packing=packing)


def grads_of(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def reference(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    loss = full_token_loss_sum(out.logits, batch["labels"])
    return loss.detach(), grads_of(model, loss)


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The worst tensor's relative difference."""
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in a)


def global_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The relative difference of all LoRA gradients taken as one vector."""
    assert a.keys() == b.keys() and a
    diff = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5
    return (diff / sum((b[k].double() ** 2).sum() for k in a) ** 0.5).item()


def float64_truth(packing: bool) -> dict[str, torch.Tensor]:
    model = lora_model(torch.float64)
    return reference(model, collate(random_rows(packing), 0, packing, dtype=torch.float64))[1]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("chunk", [3, 16, 4096])
def test_chunked_loss_and_grads_equal_the_full_logits(packing, chunk):
    model = lora_model()
    batch = collate(random_rows(packing), 0, packing)
    assert (batch["labels"] == IGNORE).any() and (batch["labels"] != IGNORE).sum() > 64  # masks, several chunks
    if not packing:
        assert (batch["attention_mask"] == 0).any()  # padding present
    ref_loss, ref_grads = reference(model, batch)
    loss_fn = TokenLoss(model, chunk_tokens=chunk)
    assert loss_fn.chunked
    loss = loss_fn(model, batch)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    grads = grads_of(model, loss)
    assert global_rel(grads, ref_grads) < 1e-6
    # Per tensor, fp32 itself is the floor: the full-logits path is ~1.4e-6 from the float64
    # gradients on the smallest tensors. Chunking must add nothing to that error.
    truth = float64_truth(packing)
    for k in grads:
        chunked_err = ((grads[k].double() - truth[k]).norm() / truth[k].norm()).item()
        full_err = ((ref_grads[k].double() - truth[k]).norm() / truth[k].norm()).item()
        assert chunked_err <= 1.25 * full_err + 1e-7, (k, chunked_err, full_err)


def test_chunked_loss_is_exact_in_float64():
    """In float64 the only difference left (the order of the final sum) is at rounding level:
    the chunked path computes the same function, not an approximation."""
    model = lora_model(torch.float64)
    batch = collate(random_rows(True, seed=3), 0, True, dtype=torch.float64)
    ref_loss, ref_grads = reference(model, batch)
    loss = TokenLoss(model, chunk_tokens=5)(model, batch)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-12
    assert max_rel(grads_of(model, loss), ref_grads) < 1e-12


def test_the_check_can_fail_a_wrong_mask_is_caught():
    """The comparison above is sharp: dropping the label mask at one position moves the loss."""
    model = lora_model()
    batch = collate(random_rows(False), 0, False)
    ref_loss, _ = reference(model, batch)
    wrong = dict(batch, labels=batch["labels"].clone())
    i, j = (wrong["labels"] == IGNORE).nonzero()[0].tolist()
    wrong["labels"][i, j] = 5
    assert abs(TokenLoss(model, chunk_tokens=7)(model, wrong).item() - ref_loss.item()) / ref_loss.item() > 1e-4


def test_no_label_tokens_gives_zero_and_hooks_are_inert_outside_a_call():
    model = lora_model()
    batch = collate(random_rows(False), 0, False)
    loss_fn = TokenLoss(model, chunk_tokens=7)
    empty = dict(batch, labels=torch.full_like(batch["labels"], IGNORE))
    assert loss_fn(model, empty).item() == 0.0
    with torch.no_grad():  # an ordinary forward (eval, export's probe) still gets its full logits, no loss
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape == (*batch["input_ids"].shape, VOCAB) and out.loss is None


def test_chunk_size_policy_and_the_full_path_switch(monkeypatch):
    monkeypatch.delenv("LORAFARM_LOSS_CHUNK_TOKENS", raising=False)
    assert chunk_tokens_for(128_256) == LOGITS_BUDGET // 128_256  # 130 tokens: 64 MiB of fp32 logits a chunk
    assert chunk_tokens_for(VOCAB) * VOCAB <= LOGITS_BUDGET * 1.01 and chunk_tokens_for(VOCAB) > 4 * 2048
    monkeypatch.setenv("LORAFARM_LOSS_CHUNK_TOKENS", "0")
    assert not TokenLoss(lora_model()).chunked  # the full-logits reference path


def run_probe(tmp_path: Path, name: str, chunk: str) -> dict[str, list]:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "LORAFARM_LOSS_CHUNK_TOKENS": chunk, "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "TRANSFORMERS_VERBOSITY": "error"}
    p = subprocess.run([sys.executable, str(HERE / "chunked_loss_probe.py"), str(tmp_path / "store"), str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_quickstart_adapter_is_unchanged_by_the_chunked_loss(tmp_path):
    """The real recipe (quickstart LoRA, DeepSpeed ZeRO-2 on one rank, 3 steps): the chunked loss
    (8 label tokens a chunk, so dozens of chunks per micro batch) trains the same adapter and
    reports the same losses as the full logits, within the tolerance the ZeRO stages are held
    to (test_core_e2e: 1e-4)."""
    full, chunked = run_probe(tmp_path, "full", "0"), run_probe(tmp_path, "chunked", "8")
    assert not full["chunked"] and chunked["chunked"]
    assert chunked["losses"] == pytest.approx(full["losses"], rel=1e-5)
    a = {k: torch.tensor(v) for k, v in chunked["lora"].items()}
    b = {k: torch.tensor(v) for k, v in full["lora"].items()}
    assert a.keys() == b.keys() and len(a) > 0
    diff = max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)
    assert diff < 1e-4
    moved = max((a[k] - torch.tensor(full["lora_init"][k])).abs().max().item() for k in a)
    assert moved > 1e-3  # it trained: equal adapters are not both the initial one
