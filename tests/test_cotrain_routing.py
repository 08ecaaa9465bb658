"""Co-training's core (issue 20): three jobs' adapters — different ranks, alphas, target modules,
learning rates, steps and batch sizes — trained together on one frozen base, each row routed
through its own job's adapter only, equal each to the adapter its job trains alone (fp32 within
1e-5, float64 within 1e-10), also when a member stops halfway; and the comparison is sharp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorafarm.cotrain import member_loss, member_parameters, new_pack, routed
from lorafarm.data import IGNORE, collate, to_rows
from lorafarm.model import apply_lora
from lorafarm.model.tiny import build_model
from lorafarm.spec import LoraSpec

VOCAB = 320  # tiny-llama
MEMBERS = {  # name -> (LoRA, init seed, learning rate, steps, rows per step)
    "x": (LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), 11, 1e-2, 4, 3),
    "y": (LoraSpec(r=8, alpha=32, dropout=0.0, target_modules="all-linear"), 12, 3e-3, 2, 2),  # leaves halfway
    "z": (LoraSpec(r=2, alpha=2, dropout=0.0, target_modules=["o_proj", "down_proj"]), 13, 2e-2, 4, 1),
}
CLIP = 0.5  # small enough that clipping acts: each member clips by its own norm
BUCKET = 32  # the pack's sequence-length bucket: every row padded to it


def base(dtype):
    torch.manual_seed(0)
    return build_model().to(dtype)


def rows_for(name: str, step: int, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1000 * ord(name[0]) + step)
    examples = []
    for _ in range(n):
        k = int(torch.randint(6, 30, (1,), generator=g))
        ids = torch.randint(4, VOCAB, (k,), generator=g).tolist()
        prompt = int(torch.randint(1, k // 2 + 1, (1,), generator=g))
        examples.append((ids, ([IGNORE] * prompt + ids[prompt + 1:] + [IGNORE])[:k]))
    return to_rows(examples, BUCKET, packing=False)


def per_row_loss(model, rows: list[dict], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy and label tokens per row. Rows are padded to the bucket's
    length (packs are formed per sequence-length bucket): kernels pick their blocking by the
    padded length, so a row padded to another length differs by float rounding (fp32: ~1e-5
    after Adam's sign-like first steps), not by what is computed."""
    b = collate(rows, 0, False, dtype)
    extra = BUCKET - b["input_ids"].shape[1]

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype)], 1)

    ids, labels = pad(b["input_ids"], 0), pad(b["labels"], IGNORE)
    out = model(input_ids=ids, attention_mask=pad(b["attention_mask"], 0), position_ids=pad(b["position_ids"], 0),
                use_cache=False)
    logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()
    ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return ce.sum(1), (labels != IGNORE).sum(1)


def train_alone(name: str, dtype) -> dict[str, torch.Tensor]:
    lora, seed, lr, steps, n = MEMBERS[name]
    model = apply_lora(base(dtype), lora, seed=seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        loss, labels = per_row_loss(model, rows_for(name, step, n), dtype)
        opt.zero_grad()
        (loss.sum() / labels.sum()).backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
    return {k.replace(".default.", "."): v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def train_packed(dtype, route=lambda members: members, checkpointing: bool = False,
                 backward_routed: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    frozen = base(dtype)
    if checkpointing:  # as lorafarm.model.load.load_base sets it up
        frozen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        frozen.enable_input_require_grads()
    model = new_pack(frozen, {m: (lora, seed) for m, (lora, seed, *_) in MEMBERS.items()})
    model.train()
    params = {m: member_parameters(model, m) for m in MEMBERS}
    opts = {m: torch.optim.AdamW(params[m], lr=MEMBERS[m][2]) for m in MEMBERS}
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    for step in range(max(s for *_, s, _ in MEMBERS.values())):
        live = [m for m in MEMBERS if step < MEMBERS[m][3]]
        rows, members = [], []
        for m in live:
            r = rows_for(m, step, MEMBERS[m][4])
            rows += r
            members += [m] * len(r)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(step)).tolist()  # interleaved
        rows, members = [rows[i] for i in order], [members[i] for i in order]
        for opt in opts.values():
            opt.zero_grad()
        with routed(model, route(members)):
            loss, labels = per_row_loss(model, rows, dtype)
            totals = {m: int(sum(int(labels[i]) for i in range(len(rows)) if members[i] == m)) for m in live}
            if backward_routed:
                member_loss(loss, members, totals).backward()
        if not backward_routed:
            member_loss(loss, members, totals).backward()
        for m in live:
            torch.nn.utils.clip_grad_norm_(params[m], CLIP)
            opts[m].step()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)  # the base never trains
    return {m: {k.replace(f".{m}.", "."): v.detach().clone() for k, v in model.named_parameters()
                if "lora_" in k and k.endswith(f".{m}.weight")} for m in MEMBERS}


def rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in a)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_each_co_trained_adapter_equals_its_job_trained_alone(dtype, tol):
    packed = train_packed(dtype)
    for m in MEMBERS:
        alone = train_alone(m, dtype)
        assert rel(packed[m], alone) < tol, m
        lora, seed, *_ = MEMBERS[m]
        init = {k.replace(".default.", "."): v for k, v in apply_lora(base(dtype), lora, seed=seed).named_parameters()
                if "lora_" in k}
        assert rel(alone, init) > 1e-3  # it trained: not the trivial case


def test_the_check_is_sharp_rows_routed_to_a_wrong_adapter_are_caught():
    def swap(members):  # one row of x goes through y's adapter
        i = members.index("x")
        return members[:i] + ["y"] + members[i + 1:] if "y" in members else members

    packed = train_packed(torch.float32, route=swap)
    assert rel(packed["x"], train_alone("x", torch.float32)) > 1e-3
    assert rel(packed["z"], train_alone("z", torch.float32)) < 1e-5  # the others are untouched by it


def test_under_gradient_checkpointing_the_backward_must_run_routed():
    """Checkpointed layers run their forward again during the backward: that second forward is
    routed only inside ``routed``, so a pack with gradient checkpointing keeps its backward there
    (as ``bench/gpu/cotrain_gpu.py`` does); outside it the recomputation skips the members'
    adapters, which torch's checkpoint refuses (fewer tensors saved than in the forward)."""
    from torch.utils.checkpoint import CheckpointError

    plain = train_packed(torch.float32)
    inside = train_packed(torch.float32, checkpointing=True, backward_routed=True)
    assert max(rel(inside[m], plain[m]) for m in MEMBERS) < 1e-5
    with pytest.raises(CheckpointError, match="different number of tensors"):
        train_packed(torch.float32, checkpointing=True)


def test_routing_names_every_row():
    model = new_pack(base(torch.float32), {"x": MEMBERS["x"][:2]})
    with pytest.raises(ValueError, match="3 rows but 2 members"), routed(model, ["x", "x"]):
        per_row_loss(model, rows_for("x", 0, 3), torch.float32)


def test_a_member_exports_its_own_peft_adapter(tmp_path):
    """What a member publishes is its adapter alone, in PEFT's format: loaded by
    ``PeftModel.from_pretrained`` onto a fresh base it gives the pack's logits for its rows."""
    from peft import PeftModel

    from lorafarm.adapter.save import save_peft
    from lorafarm.cotrain import member_state

    model = new_pack(base(torch.float32), {m: (lora, seed) for m, (lora, seed, *_) in MEMBERS.items()})
    with torch.no_grad():  # B = 0 at init: give every adapter a visible effect
        g = torch.Generator().manual_seed(3)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    rows = rows_for("y", 0, 2) + rows_for("z", 0, 1)
    batch = collate(rows, 0, False)
    with torch.no_grad(), routed(model, ["y", "y", "z"]):
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    for name, idx in (("y", slice(0, 2)), ("z", slice(2, 3))):
        out = save_peft(tmp_path / name, member_state(model, name), model.peft_config[name], "tiny")
        alone = PeftModel.from_pretrained(base(torch.float32), str(out)).eval()
        with torch.no_grad():
            logits = alone(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx],
                           use_cache=False).logits
        assert torch.allclose(logits, packed[idx], atol=1e-5, rtol=1e-5), name
        assert not torch.allclose(logits, base_logits(batch, idx), atol=1e-3)  # the adapter acts


def base_logits(batch, idx) -> torch.Tensor:
    with torch.no_grad():
        return base(torch.float32)(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx],
                                   use_cache=False).logits
