"""Co-training through the real recipes (issue 20): three jobs — different data, LoRA ranks,
alphas and targets, learning rates, steps, global and micro batches — trained as one pack by
``PackRecipe`` on real DeepSpeed, each published adapter (PEFT files in the store) equal to the
one the same spec publishes alone through ``LoraRecipe`` (fp32, dropout 0, within 1e-5
relative), at ZeRO 0 and 2, on 1 and 2 ranks; and when one member is preempted halfway the
others still equal alone, and the preempted one, from the checkpoint the pack wrote for it,
resumes alone to the adapter it gets alone (within 1e-6) — or, in another pack with another
job, resumes there to the same adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port
from safetensors.torch import load_file

from lorafarm.data import prepare
from lorafarm.model import resolve_base
from lorafarm.spec import validate_spec
from lorafarm.storage import Store

HERE, ROOT = Path(__file__).parent, Path(__file__).parent.parent
DATA = ROOT / "jobs/data"
JOBS = {  # job id -> (dataset, lora, training)
    "ja": ({"uri": str(DATA / "pirate_text.jsonl")},
           {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
           {"max_steps": 6, "global_batch_size": 4, "micro_batch_size": 2, "learning_rate": 3e-3, "seed": 1}),
    "jb": ({"uri": str(DATA / "pirate_chat.jsonl"), "format": "chat"},
           {"r": 8, "alpha": 32, "target_modules": "all-linear"},
           {"max_steps": 4, "global_batch_size": 2, "micro_batch_size": 1, "learning_rate": 1e-3, "seed": 2,
            "max_grad_norm": 0.05}),
    "jc": ({"uri": str(DATA / "pirate_prompt_completion.jsonl"), "format": "prompt_completion"},
           {"r": 2, "alpha": 2, "target_modules": ["o_proj", "down_proj"]},
           {"max_steps": 5, "global_batch_size": 6, "micro_batch_size": 3, "learning_rate": 2e-2, "seed": 3,
            "weight_decay": 0.01}),
}


def _spec(job: str, stage: int, world: int):
    dataset, lora, training = JOBS[job]
    return validate_spec({
        "tenant": f"tenant-{job}", "name": job, "dataset": dataset, "lora": {**lora, "dropout": 0.0},
        "training": {"seq_len": 64, "warmup_steps": 1, "checkpoint_every_steps": 0, **training},
        "zero": {"stage": stage}, "resources": {"workers": world}})


def _configs(store: Store, jobs: list[str], stage: int, world: int, tag: str) -> list[dict]:
    out = []
    for job in jobs:
        spec = _spec(job, stage, world)
        prepared = prepare(spec, str(resolve_base(spec.base_model)), store, parallel=False)
        job_id = f"{job}-{tag}"
        out.append({"spec": spec.model_dump(mode="json"), "job_id": job_id,
                    "adapter_uri": store.adapter_uri(spec.tenant, job_id), "job_uri": store.job_uri(spec.tenant, job_id),
                    "train_rows_uri": prepared.train_uri, "eval_rows_uri": prepared.eval_uri,
                    "data_stats": prepared.stats, "dataset_fingerprint": prepared.fingerprint})
    return out


def _run(tmp: Path, mode: str, configs: list[dict], world: int, **extra) -> dict:
    port = free_port()
    procs = []
    for rank in range(world):
        arg = tmp / f"{mode}-{configs[0]['job_id']}-{rank}.json"
        arg.write_text(json.dumps({"rank": rank, "world": world, "port": port, "mode": mode, "configs": configs,
                                   **extra}))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "pack_probe.py"), str(arg)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return json.loads(outs[0][0].strip().splitlines()[-1])


def _adapter(store_root: Path, job: str, job_id: str) -> dict[str, torch.Tensor] | None:
    path = store_root / f"tenant-{job}" / job_id / "adapter"
    if not (path / "lorafarm.json").exists():
        return None
    return load_file(str(path / "adapter_model.safetensors"))


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in a)


@pytest.mark.integration
@pytest.mark.parametrize("stage,world", [(0, 1), (2, 1), (2, 2)], ids=["zero0", "zero2", "zero2-2ranks"])
def test_each_co_trained_member_publishes_the_adapter_it_would_alone(tmp_path, stage, world):
    store = Store.open(str(tmp_path / "store"))
    for job in JOBS:
        _run(tmp_path, "solo", _configs(store, [job], stage, world, "solo"), world)
    stop = {"jb-pack": 2} if stage == 2 and world == 1 else {}  # one member preempted halfway
    configs = _configs(store, list(JOBS), stage, world, "pack")
    report = _run(tmp_path, "pack", configs, world, stop_after=stop)
    members = report["members"]
    for job in JOBS:
        alone, packed = _adapter(tmp_path / "store", job, f"{job}-solo"), _adapter(tmp_path / "store", job, f"{job}-pack")
        assert alone is not None
        if f"{job}-pack" in stop:
            assert members[f"{job}-pack"]["state"] == "preempted" and members[f"{job}-pack"]["steps"] == 2
            assert packed is None  # a preempted member publishes nothing yet: it checkpointed at its step 2
            assert [c["step"] for c in report["checkpoints"][f"{job}-pack"]] == [2]
            # and resumes alone (the real recipe, from the pack's checkpoint) to the adapter it gets alone
            resumed = _run(tmp_path, "solo", [c for c in configs if c["job_id"] == f"{job}-pack"], world)
            assert resumed["resumed_from"] == 2 and resumed["published"]
            assert _rel(_adapter(tmp_path / "store", job, f"{job}-pack"), alone) < 1e-6
            continue
        assert members[f"{job}-pack"]["state"] == "succeeded", members
        assert members[f"{job}-pack"]["steps"] == JOBS[job][2]["max_steps"]
        assert _rel(packed, alone) < 1e-5, (job, _rel(packed, alone))
        manifest = json.loads((tmp_path / "store" / f"tenant-{job}" / f"{job}-pack" / "adapter/lorafarm.json").read_text())
        assert manifest["job_id"] == f"{job}-pack" and manifest["metrics"]["co_trained"] == {"members": 3}


@pytest.mark.integration
def test_the_comparison_is_sharp(tmp_path):
    """The same pack with one member's learning rate changed: its adapter is no longer equal
    (so the equality above is not a tolerance wide enough for anything)."""
    store = Store.open(str(tmp_path / "store"))
    _run(tmp_path, "solo", _configs(store, ["jc"], 0, 1, "solo"), 1)
    configs = _configs(store, list(JOBS), 0, 1, "pack")
    configs[2]["spec"]["training"]["learning_rate"] *= 1.01
    _run(tmp_path, "pack", configs, 1)
    rel = _rel(_adapter(tmp_path / "store", "jc", "jc-pack"), _adapter(tmp_path / "store", "jc", "jc-solo"))
    assert rel > 1e-3, rel


@pytest.mark.integration
def test_a_preempted_member_resumes_in_another_pack(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    _run(tmp_path, "solo", _configs(store, ["ja"], 0, 1, "solo"), 1)
    first = _configs(store, ["ja", "jb"], 0, 1, "p")
    report = _run(tmp_path, "pack", first, 1, stop_after={"ja-p": 3})
    assert report["members"]["ja-p"]["state"] == "preempted" and report["members"]["jb-p"]["state"] == "succeeded"
    again = [c for c in first if c["job_id"] == "ja-p"] + _configs(store, ["jc"], 0, 1, "q")
    report = _run(tmp_path, "pack", again, 1)
    assert report["resumed"] == {"ja-p": 3, "jc-q": None}
    assert report["members"]["ja-p"]["state"] == "succeeded" and report["members"]["ja-p"]["steps"] == 6
    assert _rel(_adapter(tmp_path / "store", "ja", "ja-p"), _adapter(tmp_path / "store", "ja", "ja-solo")) < 1e-6


@pytest.mark.integration
def test_a_member_whose_checkpoint_is_of_another_spec_fails_alone(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    first = _configs(store, ["ja"], 0, 1, "p")
    assert _run(tmp_path, "pack", first, 1, stop_after={"ja-p": 2})["members"]["ja-p"]["state"] == "preempted"
    changed = json.loads(json.dumps(first))
    changed[0]["spec"]["training"]["learning_rate"] *= 2  # the same job id, another result: refused
    report = _run(tmp_path, "pack", changed + _configs(store, ["jc"], 0, 1, "q"), 1)
    assert report["members"]["ja-p"]["state"] == "failed" and "another spec" in report["members"]["ja-p"]["reason"]
    assert report["members"]["jc-q"]["state"] == "succeeded"
