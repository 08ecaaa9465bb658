"""Only LoRA parameters reach DeepSpeed's optimizer, for every ZeRO stage (real DeepSpeed,
one process per rank over gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from lorafarm.spec import validate_spec
from lorafarm.zero import ds_config
from lorafarm.zero.config import lr_lambda

HERE = Path(__file__).parent
LORA = 4 * (8 * (128 + 128) + 8 * (128 + 64) + 8 * (128 + 64) + 8 * (128 + 128))  # r=8 on q,k,v,o × 4 layers


def _ranks(world: int, stage: int, *extra: str) -> list[dict]:
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "zero_probe.py"), str(r), str(world), str(stage), str(port),
                               *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_stage0_optimizer_params_are_exactly_the_lora_params():
    (r,) = _ranks(1, 0)
    assert r["optimizer_params_are_lora"] is True
    assert r["frozen_requires_grad"] == [] and r["frozen_with_grad"] == []
    assert r["trainable_params"] == LORA and r["optimizer_numel"] == LORA
    assert r["optimizer_state_bytes"] == 8 * LORA
    assert r["optimizer_params"] == LORA and r["optimizer_non_model"] == 0


Q0 = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"


def test_a_base_parameter_left_trainable_is_caught_without_zero():
    """The check can fail: one base weight left trainable is named, by its requires_grad and
    by its place in the optimizer, and the optimizer's element count grows by its size."""
    (r,) = _ranks(1, 0, "leak")
    assert r["frozen_with_grad"] == [Q0] and r["frozen_in_optimizer_only"] == [Q0]
    assert r["optimizer_params"] == LORA + r["leaked_numel"] == r["trainable_params"]


@pytest.mark.integration
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_partitions_only_lora_state_across_two_ranks(stage):
    ranks = _ranks(2, stage)
    total_numel = sum(r["optimizer_numel"] for r in ranks)
    total_bytes = sum(r["optimizer_state_bytes"] for r in ranks)
    assert all(r["frozen_with_grad"] == [] and r["frozen_requires_grad"] == [] for r in ranks)
    assert all(r["optimizer_params"] == LORA and r["optimizer_non_model"] == 0 for r in ranks)
    assert all(r["trainable_params"] == LORA for r in ranks)
    assert LORA <= total_numel <= LORA * 1.02  # ZeRO pads partitions to equal size
    assert 8 * LORA <= total_bytes <= 8 * LORA * 1.02
    assert all(r["optimizer_numel"] < LORA for r in ranks)  # each rank holds only its share


@pytest.mark.integration
@pytest.mark.parametrize("stage", [2, 3])
def test_a_base_parameter_left_trainable_is_caught_under_zero(stage):
    """Under ZeRO gradients are freed or partitioned, so ``p.grad`` proves nothing: the check
    reads requires_grad and the ZeRO optimizer's own groups, and fails on a leaked base weight."""
    ranks = _ranks(2, stage, "leak")
    assert all(r["frozen_with_grad"] == [Q0] and r["frozen_in_optimizer_only"] == [Q0] for r in ranks)
    assert all(r["optimizer_params"] == LORA + r["leaked_numel"] for r in ranks)
    assert sum(r["optimizer_numel"] for r in ranks) >= LORA + ranks[0]["leaked_numel"]


def test_ds_config_derives_accumulation_from_the_global_batch():
    spec = validate_spec({"tenant": "t", "name": "n", "dataset": {"uri": "x"},
                          "training": {"global_batch_size": 16, "micro_batch_size": 2, "max_grad_norm": 0.5},
                          "zero": {"stage": 3}, "resources": {"workers": 2}})
    for world, accum in [(1, 8), (2, 4), (4, 2), (8, 1)]:
        cfg = ds_config(spec, world, 100)
        assert cfg["gradient_accumulation_steps"] == accum
        assert cfg["train_batch_size"] == 16 == cfg["train_micro_batch_size_per_gpu"] * accum * world
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_clipping"] == 0.5
    assert "bf16" not in cfg and cfg["zero_allow_untested_optimizer"] is True


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(warmup_steps=4, total_steps=20, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.55) and f(20) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))
