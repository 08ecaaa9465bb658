"""LoRA applied to the built-in tiny-llama (lorafarm/model/lora.py): only the LoRA factors train,
exactly the targeted modules are wrapped, the init is seeded without touching the caller's RNG,
and rank, alpha, dropout, rsLoRA and DoRA come from the spec. No Ray, no DeepSpeed."""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer

from lorafarm.errors import PreflightError
from lorafarm.model.lora import apply_lora, linear_module_names
from lorafarm.model.tiny import TINY_CONFIG, build_model
from lorafarm.spec import LoraSpec

LAYERS = TINY_CONFIG["num_hidden_layers"]
HIDDEN = TINY_CONFIG["hidden_size"]
KV = HIDDEN // TINY_CONFIG["num_attention_heads"] * TINY_CONFIG["num_key_value_heads"]


def lora_layers(model) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_a(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_only_lora_factors_are_trainable():
    model = apply_lora(build_model(), LoraSpec(r=8), seed=0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not [n for n in frozen if "lora_" in n]
    # r × (in + out) per adapted module: q and o are hidden→hidden, k and v hidden→KV
    assert sum(trainable.values()) == LAYERS * 8 * (2 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + KV))


def test_exactly_the_targeted_modules_are_wrapped():
    model = apply_lora(build_model(), LoraSpec(target_modules=["q_proj", "v_proj"]), seed=0)
    wrapped = lora_layers(model)
    assert len(wrapped) == 2 * LAYERS
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == {"q_proj", "v_proj"}
    untouched = [n for n, m in model.named_modules() if n.endswith(("k_proj", "o_proj", "gate_proj", "lm_head"))]
    assert untouched and not any(isinstance(m, LoraLayer) for n, m in model.named_modules() if n in untouched)


def test_all_linear_wraps_every_linear_but_the_output_head():
    base = build_model()
    assert linear_module_names(base) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    wrapped = lora_layers(apply_lora(base, LoraSpec(target_modules="all-linear"), seed=0))
    assert len(wrapped) == 7 * LAYERS and not [n for n in wrapped if "lm_head" in n]


def test_an_unknown_target_is_refused_naming_the_ones_that_exist():
    with pytest.raises(PreflightError) as e:
        apply_lora(build_model(), LoraSpec(target_modules=["q_proj", "query_key_value"]), seed=0)
    message = str(e.value)
    assert "lora.target_modules: query_key_value not found in the base model" in message
    assert "use some of: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj (or all-linear)" in message


def test_the_init_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    first = lora_a(apply_lora(build_model(), LoraSpec(), seed=7))
    assert torch.equal(torch.random.get_rng_state(), before)
    again = lora_a(apply_lora(build_model(), LoraSpec(), seed=7))
    other = lora_a(apply_lora(build_model(), LoraSpec(), seed=8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first)
    # lora_B starts at zero, so the adapted model begins as the base
    model = apply_lora(build_model(), LoraSpec(), seed=7)
    assert all(not p.any() for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("r,alpha,dropout,rslora", [(4, 8.0, 0.0, False), (16, 8.0, 0.25, False),
                                                    (16, 32.0, 0.1, True)])
def test_rank_alpha_dropout_and_scaling_come_from_the_spec(r, alpha, dropout, rslora):
    model = apply_lora(build_model(), LoraSpec(r=r, alpha=alpha, dropout=dropout, use_rslora=rslora), seed=0)
    for name, layer in lora_layers(model).items():
        assert layer.r["default"] == r and layer.lora_alpha["default"] == alpha, name
        assert layer.scaling["default"] == pytest.approx(alpha / (math.sqrt(r) if rslora else r)), name
        drop = layer.lora_dropout["default"]
        assert (drop.p == dropout) if dropout else isinstance(drop, torch.nn.Identity), name
        assert layer.lora_A["default"].weight.shape[0] == r and layer.lora_B["default"].weight.shape[1] == r


def test_dora_adds_a_trainable_magnitude_per_module():
    plain = apply_lora(build_model(), LoraSpec(), seed=0)
    dora = apply_lora(build_model(), LoraSpec(use_dora=True), seed=0)
    magnitudes = [n for n, p in dora.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 4 * LAYERS
    assert not [n for n, _ in plain.named_parameters() if "lora_magnitude_vector" in n]
