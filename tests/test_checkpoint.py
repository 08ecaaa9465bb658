"""Checkpoints and exact resume with the real recipe under real DeepSpeed (one process per rank
over gloo, no Ray): stop mid-epoch, resume, on the same or another worker count and ZeRO
stage; the final adapters equal an uninterrupted run's."""

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
from lorafarm.worker.checkpoints import MARKER, latest_checkpoint, list_checkpoints

HERE = Path(__file__).parent
ROOT = HERE.parent



def _spec(dropout: float = 0.0, **training):
    return validate_spec({
        "tenant": "t", "name": "resume", "dataset": {"uri": str(ROOT / "jobs/data/pirate_text.jsonl"), "eval_fraction": 0.1},
        "lora": {"r": 4, "dropout": dropout},
        "training": {"max_steps": 6, "global_batch_size": 4, "micro_batch_size": 1, "seq_len": 64,
                     "learning_rate": 3e-3, "warmup_steps": 1, "checkpoint_every_steps": 0, "keep_last": 2,
                     **training},
    })


def _run(tmp: Path, spec, job_id: str, world: int, stage: int | str = "auto", stop_after: int = 0, nan_at_step: int = 0,
         fails: bool = False, store_root: str | None = None):
    """One attempt of job ``job_id`` on ``world`` ranks; returns rank 0's report (its stderr
    when ``fails``)."""
    store = Store.open(store_root or str(tmp / "store"))
    spec = validate_spec({**spec.model_dump(mode="json"), "zero": {"stage": stage}, "resources": {"workers": world}})
    prepared = prepare(spec, str(resolve_base(spec.base_model)), store, parallel=False)
    job_uri = store.job_uri(spec.tenant, job_id)
    config = {
        "spec": spec.model_dump(mode="json"), "job_id": job_id, "adapter_uri": store.adapter_uri(spec.tenant, job_id),
        "job_uri": job_uri, "train_rows_uri": prepared.train_uri, "eval_rows_uri": prepared.eval_uri,
        "data_stats": prepared.stats, "dataset_fingerprint": prepared.fingerprint,
    }
    port = free_port()
    procs = []
    for rank in range(world):
        arg = tmp / f"{job_id}-{rank}.json"
        arg.write_text(json.dumps({"rank": rank, "world": world, "port": port, "config": config,
                                   "stop_after": stop_after, "nan_at_step": nan_at_step}))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "resume_probe.py"), str(arg)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if fails:
            assert p.returncode != 0
            return err
        assert p.returncode == 0, err[-4000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports[0]


def _adapter(tmp: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(tmp / "store/t" / job_id / "adapter/adapter_model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_checkpoint_layout_imports_no_torch():
    """The scheduler and the CLI list checkpoints without loading torch."""
    code = "import sys, lorafarm.worker, lorafarm.worker.checkpoints; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run on 1 worker (zero.stage auto: 0)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    report = _run(tmp, _spec(), "whole", world=1)
    assert report["published"] and report["resumed_from"] is None and len(report["losses"]) == 6
    return tmp, _adapter(tmp, "whole"), report["losses"]


def test_stop_mid_epoch_and_resume_gives_the_uninterrupted_adapter(baseline):
    tmp, whole, whole_losses = baseline
    # 6 steps of 4 rows over 360 training rows: the stop after step 3 is mid-epoch (epoch = 90 steps)
    first = _run(tmp, _spec(), "stopped", world=1, stop_after=3)
    assert first["preempted_at"] == 3 and not first["published"]
    assert [c["step"] for c in first["checkpoints"]] == [3]
    ref = latest_checkpoint(str(tmp / "store/t/stopped"))
    assert ref is not None and ref.step == 3
    assert ref.marker["rng_files"] == ["rng-rank-0.pt"]  # every file, RNG files included, has its sha256
    assert set(ref.marker["files"]) == {"weights.safetensors", "optimizer.safetensors", "state.json", "rng-rank-0.pt"}
    assert all(len(m["sha256"]) == 64 and m["size"] > 0 for m in ref.marker["files"].values())
    state = json.loads((tmp / "store/t/stopped/checkpoints/step-3/state.json").read_text())
    assert state["samples_seen"] == 12 and state["step"] == 3 and state["optimizer_step"] == 3
    assert state["spec_digest"].startswith("sha256:") and state["resume_digest"] == ref.marker["resume_digest"]
    # only LoRA tensors: never the frozen base
    weights = load_file(str(tmp / "store/t/stopped/checkpoints/step-3/weights.safetensors"))
    assert weights and all("lora_" in k for k in weights)

    second = _run(tmp, _spec(), "stopped", world=1)
    assert second["resumed_from"] == 3 and second["published"]
    assert second["losses"] == pytest.approx(whole_losses, abs=1e-6)  # the history is whole, and the same
    assert _max_diff(_adapter(tmp, "stopped"), whole) <= 1e-6


@pytest.mark.integration
def test_elastic_resume_on_two_workers_under_zero3_after_one_under_zero1(baseline):
    tmp, whole, whole_losses = baseline
    first = _run(tmp, _spec(), "elastic", world=1, stage=1, stop_after=2)
    assert first["preempted_at"] == 2
    second = _run(tmp, _spec(), "elastic", world=2, stage=3)
    assert second["resumed_from"] == 2 and second["published"]
    assert second["losses"] == pytest.approx(whole_losses, rel=1e-5)
    assert _max_diff(_adapter(tmp, "elastic"), whole) <= 1e-5  # float tolerance: sums split over 2 ranks


@pytest.mark.integration
def test_elastic_resume_with_dropout_is_exact_across_worker_counts(tmp_path, baseline):
    """Dropout masks come from (seed, step, row of the global batch), not from a rank's RNG
    stream: stopped on 1 worker, resumed on 2 (another micro batch too), the adapter is the
    uninterrupted 1-worker run's within 1e-5 — and dropout did change it."""
    _, no_dropout, _ = baseline
    whole = _run(tmp_path, _spec(dropout=0.2), "whole-dropout", world=1)
    assert whole["published"]
    first = _run(tmp_path, _spec(dropout=0.2), "elastic-dropout", world=1, stage=1, stop_after=3)
    assert first["preempted_at"] == 3
    second = _run(tmp_path, _spec(dropout=0.2, micro_batch_size=2), "elastic-dropout", world=2, stage=2)
    assert second["resumed_from"] == 3 and second["published"]
    assert second["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    reference = _adapter(tmp_path, "whole-dropout")
    assert _max_diff(_adapter(tmp_path, "elastic-dropout"), reference) <= 1e-5
    assert _max_diff(reference, no_dropout) > 1e-4  # the masks were really applied


def test_periodic_checkpoints_are_pruned_to_keep_last(tmp_path):
    report = _run(tmp_path, _spec(checkpoint_every_steps=1, keep_last=2), "periodic", world=1)
    assert [c["step"] for c in report["checkpoints"]] == [1, 2, 3, 4, 5]  # none after the last step
    kept = list_checkpoints(str(tmp_path / "store/t/periodic"))
    assert [c.step for c in kept] == [4, 5]
    left = sorted(p.name for p in (tmp_path / "store/t/periodic/checkpoints").iterdir())
    assert left == ["step-4", "step-5"]
    assert all(c["bytes"] > 0 and c["seconds"] >= 0 for c in report["checkpoints"])


def test_a_directory_without_its_marker_is_not_a_checkpoint(tmp_path):
    report = _run(tmp_path, _spec(), "cut", world=1, stop_after=2)
    assert report["preempted_at"] == 2
    job = tmp_path / "store/t/cut"
    (job / "checkpoints/step-2" / MARKER).unlink()  # a save cut short before its marker
    assert latest_checkpoint(str(job)) is None
    again = _run(tmp_path, _spec(), "cut", world=1)
    assert again["resumed_from"] is None and again["published"]


def test_resume_under_a_changed_spec_is_refused_naming_the_fix(tmp_path):
    _run(tmp_path, _spec(), "changed", world=1, stop_after=2)
    store = Store.open(str(tmp_path / "store"))
    spec = validate_spec({**_spec(learning_rate=1e-3).model_dump(mode="json")})
    prepared = prepare(spec, str(resolve_base(spec.base_model)), store, parallel=False)
    code = (
        "import json, os, sys\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[1], RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')\n"
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        "from lorafarm.errors import TrainingError\n"
        "from lorafarm.spec import validate_spec\n"
        "from lorafarm.worker.recipe import LoraRecipe, WorkerConfig\n"
        "c = json.loads(sys.argv[2])\n"
        "r = LoraRecipe(WorkerConfig(**{**c, 'spec': validate_spec(c['spec'])}), 0, 1)\n"
        "try:\n    r.setup()\nexcept TrainingError as e:\n    print('REFUSED', e)\n"
    )
    config = {"spec": spec.model_dump(mode="json"), "job_id": "changed",
              "adapter_uri": store.adapter_uri("t", "changed"), "job_uri": store.job_uri("t", "changed"),
              "train_rows_uri": prepared.train_uri, "eval_rows_uri": prepared.eval_uri,
              "data_stats": prepared.stats, "dataset_fingerprint": prepared.fingerprint}
    out = subprocess.run([sys.executable, "-c", code, str(free_port()), json.dumps(config)],
                         capture_output=True, text=True, timeout=300)
    assert "REFUSED" in out.stdout and "training.learning_rate:" in out.stdout, out.stderr[-3000:]  # the changed field


def test_nonfinite_loss_stops_naming_the_step_and_publishes_nothing(tmp_path):
    err = _run(tmp_path, _spec(), "nan-stop", world=1, nan_at_step=3, fails=True)
    assert "TrainingError: loss is nan at step 3" in err and "on_nonfinite_loss=skip" in err
    assert not (tmp_path / "store/t/nan-stop/adapter/lorafarm.json").exists()


def test_nonfinite_loss_skip_leaves_the_update_out_and_goes_on(tmp_path, baseline):
    _, whole, whole_losses = baseline
    report = _run(tmp_path, _spec(on_nonfinite_loss="skip"), "nan-skip", world=1, nan_at_step=3)
    losses = report["losses"]
    assert report["skipped_steps"] == [3] and report["published"]
    assert losses[2] != losses[2] and all(v == v for i, v in enumerate(losses) if i != 2)
    assert losses[:2] == pytest.approx(whole_losses[:2], abs=1e-6)
    adapter = _adapter(tmp_path, "nan-skip")
    assert all(torch.isfinite(t).all() for t in adapter.values())
    assert _max_diff(adapter, whole) > 1e-4  # one update fewer than the uninterrupted run


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(baseline):
    """A flipped byte in a tensor file, or in a rank's RNG file, makes a checkpoint corrupt:
    the marker's sha256s cover both, and the resume falls back past them."""
    tmp, whole, _ = baseline
    spec = _spec(checkpoint_every_steps=1, keep_last=3)
    first = _run(tmp, spec, "fallback", world=1, stop_after=5)
    assert first["preempted_at"] == 5
    for corrupt, at in (("step-5/rng-rank-0.pt", 0.5), ("step-4/weights.safetensors", -5)):
        path = tmp / "store/t/fallback/checkpoints" / corrupt
        data = bytearray(path.read_bytes())
        data[int(at * len(data)) if isinstance(at, float) else at] ^= 0xFF
        path.write_bytes(bytes(data))
    second = _run(tmp, spec, "fallback", world=1)
    assert second["resumed_from"] == 3 and second["published"]
    assert _max_diff(_adapter(tmp, "fallback"), whole) <= 1e-6


@pytest.mark.integration
def test_checkpoints_in_s3_prune_and_resume_exactly(baseline, s3_bucket):
    from safetensors.torch import load

    from lorafarm.storage import read_bytes

    tmp, whole, _ = baseline
    root = f"s3://{s3_bucket}/store"
    spec = _spec(checkpoint_every_steps=1, keep_last=2)
    first = _run(tmp, spec, "on-s3", world=1, stage=2, stop_after=3, store_root=root)
    assert first["preempted_at"] == 3
    assert [c.step for c in list_checkpoints(f"{root}/t/on-s3")] == [2, 3]
    second = _run(tmp, spec, "on-s3", world=1, stage=2, store_root=root)
    assert second["resumed_from"] == 3 and second["published"]
    adapter = load(read_bytes(f"{root}/t/on-s3/adapter/adapter_model.safetensors"))
    assert _max_diff(adapter, whole) <= 1e-6
