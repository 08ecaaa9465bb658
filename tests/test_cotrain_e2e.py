"""Co-training end to end on a real local Ray cluster (issue 20): three jobs as one pack on one
Ray Train gang — one publishes exactly the adapter the same spec publishes alone through
``run_job`` (within 1e-5), one more publishes its own PEFT adapter that PEFT loads alone, and
one whose data has a bad row deep in its file fails alone, naming the file and line, while the
others succeed. Each member's events say it trained in a pack of 3 (never with whom); each
keeps its own history. And the CLI refuses specs that cannot share a pack, naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorafarm.cotrain.launch import run_pack
from lorafarm.errors import JobFailed
from lorafarm.events import GroupStarted, RunOutcome
from lorafarm.spec import validate_spec
from lorafarm.storage import Store
from lorafarm.worker.launch import run_job

ROOT = Path(__file__).resolve().parents[1]


def _spec(name: str, uri: str, fmt: str, **training) -> dict:
    return {"tenant": f"t-{name}", "name": name, "dataset": {"uri": uri, "format": fmt, "eval_fraction": 0.1},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "training": {"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2, "seq_len": 64,
                         "learning_rate": 3e-3, "warmup_steps": 1, "checkpoint_every_steps": 0, **training},
            "zero": {"stage": 0}, "resources": {"workers": 1}}


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in a)


@pytest.mark.integration
def test_a_pack_on_ray_trains_each_member_as_alone_and_a_bad_member_fails_alone(ray_session, tmp_path):
    store = Store.open(str(tmp_path / "store"))
    lines = (ROOT / "jobs/data/pirate_text.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:300] + ["{not json"] + lines[300:]) + "\n")  # line 301
    a = validate_spec(_spec("a", str(ROOT / "jobs/data/pirate_text.jsonl"), "text"))
    b = validate_spec({**_spec("b", str(ROOT / "jobs/data/pirate_chat.jsonl"), "chat", max_steps=3,
                               learning_rate=1e-3, seed=5), "lora": {"r": 8, "alpha": 16, "dropout": 0.0}})
    c = validate_spec(_spec("c", str(bad), "text"))
    alone = run_job(a, store, job_id="a-alone")
    events: dict[str, list] = {}
    ended = run_pack([a, b, c], store, job_ids=["a-pack", "b-pack", "c-pack"],
                     on_progress=lambda j, e: events.setdefault(j, []).append(e))
    assert isinstance(ended["a-pack"], RunOutcome) and isinstance(ended["b-pack"], RunOutcome), ended
    assert isinstance(ended["c-pack"], JobFailed) and "bad.jsonl" in ended["c-pack"].reason \
        and "301" in ended["c-pack"].reason, ended["c-pack"]
    rel = _rel(load_file(str(Path(ended["a-pack"].adapter_uri) / "adapter_model.safetensors")),
               load_file(str(Path(alone.adapter_uri) / "adapter_model.safetensors")))
    assert rel < 1e-5, rel
    # the members that trained: a pack of 2 once c failed in its data; each its own history and steps
    for job, steps in (("a-pack", 4), ("b-pack", 3)):
        started = [e for e in events[job] if isinstance(e, GroupStarted)]
        assert started and started[0].pack_members == 2
        assert ended[job].metrics["steps"] == steps and ended[job].metrics["co_trained"] == {"members": 2}
        tenant = "t-" + job[0]
        history = (tmp_path / "store" / tenant / job / "history.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in history if '"step"' in x][-steps:] == list(range(1, steps + 1))
    from peft import PeftModel

    from lorafarm.model import load_base, resolve_base

    model = PeftModel.from_pretrained(load_base(resolve_base("tiny-llama")), ended["b-pack"].adapter_uri)
    assert model.peft_config["default"].r == 8


def test_the_cli_refuses_jobs_that_cannot_share_a_pack_naming_the_field(tmp_path):
    paths = []
    for name, over in (("x", {}), ("y", {"seq_len": 512, "co_train": "never"})):
        spec = _spec(name, str(ROOT / "jobs/data/pirate_text.jsonl"), "text", **over)
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(json.dumps(spec))
    p = subprocess.run([sys.executable, "-m", "lorafarm.cli.main", "co-train", *map(str, paths), "--store", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "training.co_train is never" in p.stderr + p.stdout and "training.seq_len" in p.stderr + p.stdout
