"""The checks an adapter must pass before it is published (lorafarm/adapter/verify.py), each on
the real LoRA state of tiny-llama: every test breaks the state one way and expects the check's
own message, so removing a check fails its test. No Ray, no DeepSpeed."""

from __future__ import annotations

import pytest
import torch

from lorafarm.adapter.export import gather_lora_state
from lorafarm.adapter.verify import compare_logits, expected_lora_modules, require, verify_state
from lorafarm.errors import AdapterError
from lorafarm.model.lora import apply_lora
from lorafarm.model.tiny import TINY_CONFIG, build_model
from lorafarm.spec import LoraSpec

R = 4
Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.0.self_attn.v_proj"


@pytest.fixture(scope="module")
def peft_model():
    return apply_lora(build_model(), LoraSpec(r=R, target_modules=["q_proj", "v_proj"]), seed=0)


@pytest.fixture(scope="module")
def modules(peft_model) -> dict[str, tuple[int, int]]:
    return expected_lora_modules(peft_model)


@pytest.fixture
def trained(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors as after training: PEFT starts every lora_B at zero, so fill them."""
    state = {k: v.clone() for k, v in gather_lora_state(peft_model).items()}
    for key, t in state.items():
        if ".lora_B." in key:
            t.normal_(generator=torch.Generator().manual_seed(0))
    return state


def test_expected_modules_are_every_adapted_layer_with_its_shape(modules):
    hidden = TINY_CONFIG["hidden_size"]
    kv = hidden // TINY_CONFIG["num_attention_heads"] * TINY_CONFIG["num_key_value_heads"]
    assert len(modules) == 2 * TINY_CONFIG["num_hidden_layers"]
    assert {name.rsplit(".", 1)[-1] for name in modules} == {"q_proj", "v_proj"}
    assert modules[Q] == (hidden, hidden) and modules[V] == (hidden, kv)


def test_a_trained_adapter_passes(trained, modules):
    assert verify_state(trained, modules, R, steps_done=3) == []
    require([])  # nothing to report: no error


def test_an_empty_state_is_refused(modules):
    assert verify_state({}, modules, R, steps_done=3) == ["the adapter is empty (no LoRA tensors were gathered)"]


def test_a_model_without_lora_layers_is_refused(trained):
    assert "no LoRA layers found in the trained model" in verify_state(trained, {}, R, steps_done=3)


@pytest.mark.parametrize("factor", ["lora_A", "lora_B"])
def test_a_missing_module_is_named(trained, modules, factor):
    del trained[f"{Q}.{factor}.weight"]
    assert verify_state(trained, modules, R, steps_done=3) == [f"{Q}: lora_A/lora_B missing"]


def test_a_rank_other_than_the_config_is_a_shape_mismatch(trained, modules):
    hidden = TINY_CONFIG["hidden_size"]
    problems = verify_state(trained, modules, R + 4, steps_done=3)
    assert f"{Q}.lora_A: shape {(R, hidden)}, expected {(R + 4, hidden)}" in problems
    assert f"{Q}.lora_B: shape {(hidden, R)}, expected {(hidden, R + 4)}" in problems
    assert len(problems) == 2 * len(modules)  # both factors of every module


@pytest.mark.parametrize("factor,shape,expected", [
    ("lora_A", (R, 64), (R, 128)),   # in_features wrong
    ("lora_B", (64, R), (128, R)),   # out_features wrong
])
def test_a_factor_of_the_wrong_size_is_named(trained, modules, factor, shape, expected):
    trained[f"{Q}.{factor}.weight"] = torch.ones(shape)
    assert verify_state(trained, modules, R, steps_done=3) == [f"{Q}.{factor}: shape {shape}, expected {expected}"]


def test_lora_b_all_zero_after_training_means_nothing_trained(trained, modules):
    trained[f"{V}.lora_B.weight"].zero_()
    expected = f"{V}.lora_B: all zeros after 3 steps (nothing was trained)"
    assert verify_state(trained, modules, R, steps_done=3) == [expected]
    assert verify_state(trained, modules, R, steps_done=0) == []  # before any step, zero is PEFT's init


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("factor", ["lora_A", "lora_B"])
def test_non_finite_values_are_named(trained, modules, bad, factor):
    trained[f"{V}.{factor}.weight"][0, 0] = bad
    assert verify_state(trained, modules, R, steps_done=3) == [f"{V}.{factor}.weight: contains NaN or inf"]


def test_require_raises_every_problem_and_caps_the_list():
    with pytest.raises(AdapterError, match="not published:\n  a: one\n  b: two$"):
        require(["a: one", "b: two"])
    with pytest.raises(AdapterError) as e:
        require([f"p{i}" for i in range(25)])
    lines = str(e.value).splitlines()
    assert lines[1:21] == [f"  p{i}" for i in range(20)] and lines[21:] == ["  ... and 5 more"]


@pytest.mark.parametrize("precision,diff,ok", [
    ("fp32", 5e-5, True), ("fp32", 2e-4, False),
    ("bf16", 2e-2, True), ("bf16", 5e-2, False),
    ("fp16", 2e-2, True), ("fp16", 5e-2, False),
])
def test_compare_logits_tolerance_per_precision(precision, diff, ok):
    expected = torch.linspace(-1, 1, 64).reshape(2, 32)
    actual = expected.clone()
    actual[1, 3] += diff
    problem = compare_logits(expected, actual, precision)
    if ok:
        assert problem is None
    else:
        tol = "0.0001" if precision == "fp32" else "0.03"
        assert problem == f"reloaded adapter's logits differ from the trained model's by {diff:.3g} (tolerance {tol})"


def test_compare_logits_tolerance_scales_with_large_logits():
    expected = torch.linspace(-100, 100, 64)
    assert compare_logits(expected, expected + 5e-3, "fp32") is None  # 5e-5 of the largest logit
    assert compare_logits(expected, expected + 2e-2, "fp32") is not None
    for small in (torch.zeros(8), torch.full((8,), 0.1)):  # no scale below 1: small logits keep the absolute one
        assert compare_logits(small, small + 5e-5, "fp32") is None
        assert compare_logits(small, small + 2e-4, "fp32") is not None
