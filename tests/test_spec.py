"""The job spec: every bad spec is refused with exit 2, naming the field, without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import with_field

from lorafarm.cli.main import main
from lorafarm.errors import SpecError
from lorafarm.spec import load_spec, spec_digest, validate_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "tenant": "acme",
    "name": "job-1",
    "dataset": {"uri": "jobs/data/pirate_chat.jsonl", "format": "chat"},
    "training": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 2},
}


def _with(path: str, value) -> dict:
    return with_field(GOOD, path, value)


def _without(path: str) -> dict:
    spec = json.loads(json.dumps(GOOD))
    node = spec
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    del node[leaf]
    return spec


# (spec, field path that must be named, a word the fix must contain)
BAD_SPECS = [
    (_with("tenant", "Acme"), "tenant", "lowercase"),
    (_with("tenant", "a" * 41), "tenant", "1-40"),
    (_with("name", "my_job"), "name", "lowercase"),
    (_without("tenant"), "tenant", "add it"),
    (_without("dataset"), "dataset", "add it"),
    (_with("dataset.uri", ""), "dataset.uri", "value"),
    (_with("dataset.format", "chatml"), "dataset.format", "prompt_completion"),
    (_with("dataset.fromat", "chat"), "dataset.fromat", "did you mean `format`"),
    (_with("dataset.eval_fraction", 0.9), "dataset.eval_fraction", "<= 0.5"),
    (_with("dataset.on_bad_rows", "ignore"), "dataset.on_bad_rows", "skip"),
    (_with("lora.r", 0), "lora.r", ">= 1"),
    (_with("lora.r", "eight"), "lora.r", "whole number"),
    (_with("lora.alpha", -1), "lora.alpha", "> 0"),
    (_with("lora.dropout", 1.5), "lora.dropout", "< 1"),
    (_with("lora.target_modules", "q_proj"), "lora.target_modules", "all-linear"),
    (_with("lora.rank", 8), "lora.rank", "known fields"),
    (_with("training.max_step", 10), "training.max_step", "did you mean `max_steps`"),
    (_with("training.learning_rate", 0), "training.learning_rate", "> 0"),
    (_with("training.global_batch_size", 7), "training.global_batch_size", "multiple of 2"),
    (_with("training.packing", "maybe"), "training.packing", "true or false"),
    (_with("training.epochs", 2), "training.epochs", "exactly one"),
    (_with("training.warmup_steps", -1), "training.warmup_steps", ">= 0"),  # one longer than the run is capped
    (_with("zero.stage", 4), "zero.stage", "0, 1, 2 or 3"),
    (_with("zero.precision", "bf16"), "zero.precision", "fp32"),
    (_with("zero.precision", "fp8"), "zero.precision", "bf16"),
    (_with("resources.workers", 0), "resources.workers", ">= 1"),
    (_with("resources.gpus_per_worker", -1), "resources.gpus_per_worker", ">= 0"),
    (_with("resources", 4), "resources", "mapping"),
    ({**GOOD, "trust_remote_cod": True}, "trust_remote_cod", "did you mean `trust_remote_code`"),
    ({**GOOD, "priority": "High!"}, "priority", "lowercase"),
    (_with("dataset.eval_uri", "x.jsonl") | {"dataset": {**GOOD["dataset"], "eval_uri": "x.jsonl", "eval_fraction": 0.1}},
     "dataset.eval_fraction", "one eval source"),
]


def _write(tmp_path: Path, spec) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.parametrize(("spec", "field", "fix"), BAD_SPECS, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_SPECS)])
def test_bad_spec_is_rejected_naming_the_field(tmp_path, capsys, spec, field, fix):
    code = main(["validate", str(_write(tmp_path, spec))])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any(line.startswith(f"error: {field}:") for line in lines), err
    assert fix in err, err
    assert "—" in err and "Traceback" not in err


def test_table_is_large_enough():
    assert len(BAD_SPECS) >= 20


def test_three_problems_are_reported_at_once():
    bad = _with("lora.r", 0)
    bad["zero"] = {"stage": 9}
    bad["training"]["global_batch_size"] = 7
    with pytest.raises(SpecError) as info:
        validate_spec(bad)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["lora.r", "zero.stage", "training.global_batch_size"]


def test_cross_field_rule_runs_even_when_another_section_is_bad():
    bad = _with("lora.r", -3)
    bad["resources"] = {"workers": 3}
    with pytest.raises(SpecError) as info:
        validate_spec(bad)
    assert any(p.startswith("training.global_batch_size:") for p in info.value.problems)


def test_set_overrides_any_field(tmp_path):
    path = _write(tmp_path, GOOD)
    spec = load_spec(path, ["training.max_steps=3", "lora.target_modules=[q_proj, v_proj]", "zero.stage=3"])
    assert spec.training.max_steps == 3
    assert spec.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.zero.stage == 3


def test_set_unknown_path_and_malformed_pair(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(SpecError) as info:
        load_spec(path, ["training.max_stepz=3"])
    assert "did you mean `max_steps`" in str(info.value)
    with pytest.raises(SpecError) as info:
        load_spec(path, ["nonsense"])
    assert "dotted.path=value" in str(info.value)


def test_defaults_and_digest_are_stable():
    a, b = validate_spec(GOOD), validate_spec(json.loads(json.dumps(GOOD)))
    assert spec_digest(a) == spec_digest(b)
    assert a.zero.stage == "auto" and a.resolved_precision() == "fp32"
    assert a.resolved_stage(1) == 0 and a.resolved_stage(2) == 2  # nothing to partition on one worker
    assert validate_spec(_with("zero.stage", 3)).resolved_stage(1) == 3
    assert a.grad_accum_steps(1) == 4 and a.grad_accum_steps(2) == 2 and a.grad_accum_steps(4) == 1
    assert spec_digest(validate_spec(_with("lora.r", 4))) != spec_digest(a)


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("tenant: acme\nname: [unclosed\n")
    assert main(["validate", str(p)]) == 2
    assert "line" in capsys.readouterr().err


def test_cli_never_prints_a_traceback(tmp_path):
    """A real process: bad spec → exit 2, one line per problem, no traceback."""
    path = _write(tmp_path, {"tenant": "Bad Name", "dataset": {"uri": "x", "formt": 1}})
    proc = subprocess.run([sys.executable, "-m", "lorafarm.cli.main", "run", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tenant:" in proc.stderr and "name:" in proc.stderr and "dataset.formt:" in proc.stderr


def test_spec_imports_without_torch_or_ray():
    code = "import sys, lorafarm.spec; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_schema_command_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "training" in schema["properties"] and "TrainingSpec" in schema["$defs"]


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "jobs").glob("*.yaml") if p.name != "tenants.yaml"),
                         ids=lambda p: p.name)
def test_example_jobs_are_valid_specs(path):
    spec = load_spec(path)
    assert spec.tenant and spec.name
