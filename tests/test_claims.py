"""Claims the README makes, each proved by a fast test that can fail (no Ray):

- dropout masks depend on (seed, step, row of the global batch) only — the basis of exact
  resume across worker counts with dropout (the end-to-end proof is in test_checkpoint.py);
- the checkpoint marker vouches for every file, the per-rank RNG files included;
- backfill never delays the blocked head, over a whole timeline and not only in one decision;
- the example tenants file ``jobs/tenants.yaml`` parses as ``lorafarm serve --tenants`` reads it,
  and shows every field of the format.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorafarm.policy import decide
from lorafarm.sim import ClusterSpec, SimJob, Simulator, generate, tenants_yaml
from lorafarm.tenants import load_tenants
from lorafarm.worker.dropout import DropoutRows, RowSeededDropout, seed_dropout_by_row

ROOT = Path(__file__).parent.parent

# -- dropout: a row's mask is the same whatever batch it is in ---------------------------------


def _masks(x: torch.Tensor, rows: list[int], step: int, *, max_len: int = 12, p: float = 0.3) -> torch.Tensor:
    ctx = DropoutRows(seed=5, max_len=max_len)
    ctx.set(step, rows)
    return RowSeededDropout(p, "layer.lora_dropout.default", ctx).train()(x)


def test_a_rows_dropout_mask_does_not_depend_on_its_micro_batch_or_padding():
    torch.manual_seed(0)
    ones = torch.ones(4, 10, 6)
    whole = _masks(ones, [0, 1, 2, 3], step=7)  # one micro batch of 4 (1 worker)
    halves = torch.cat([_masks(ones[:2], [0, 1], step=7), _masks(ones[2:], [2, 3], step=7)])  # 2 workers
    assert torch.equal(whole, halves)
    shorter = _masks(ones[:, :6], [0, 1, 2, 3], step=7)  # the same rows padded to another length
    assert torch.equal(shorter, whole[:, :6])
    torch.manual_seed(123)  # the process's RNG stream plays no part
    assert torch.equal(_masks(ones, [0, 1, 2, 3], step=7), whole)
    assert whole.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert 0.15 < float((whole == 0).float().mean()) < 0.45


def test_dropout_masks_change_with_the_step_and_the_row_and_vanish_in_eval():
    ones = torch.ones(2, 10, 6)
    a = _masks(ones, [0, 1], step=1)
    assert not torch.equal(a, _masks(ones, [0, 1], step=2))
    assert not torch.equal(a[0], a[1])  # two rows, two masks
    assert not torch.equal(a, _masks(ones, [2, 3], step=1))
    ctx = DropoutRows(seed=5, max_len=12)
    assert torch.equal(RowSeededDropout(0.3, "m", ctx).eval()(ones), ones)
    with pytest.raises(RuntimeError, match="does not match"):
        _masks(ones, [0], step=1)  # rows announced wrongly: refused, never silently mis-seeded


def test_every_lora_dropout_of_a_peft_model_is_row_seeded():
    from lorafarm.model import apply_lora, load_base, resolve_base
    from lorafarm.spec import validate_spec

    spec = validate_spec({"tenant": "t", "name": "n", "dataset": {"uri": "x"}, "lora": {"r": 4, "dropout": 0.1}})
    model = apply_lora(load_base(resolve_base("tiny-llama")), spec.lora, seed=0)
    n_before = sum(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    assert n_before > 0
    assert seed_dropout_by_row(model, DropoutRows(seed=0, max_len=16)) == n_before
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    names = [m.name for m in model.modules() if isinstance(m, RowSeededDropout)]
    assert len(names) == n_before and all(".lora_dropout." in n for n in names)
    assert len(set(names)) == len(names)  # each module draws its own masks


# -- the checkpoint marker covers the RNG files ---------------------------------------------


def test_the_marker_vouches_for_every_rng_file_and_a_corrupt_one_is_refused(tmp_path):
    from lorafarm.errors import StorageError
    from lorafarm.storage import join, write_bytes
    from lorafarm.worker.checkpoints import (
        latest_checkpoint,
        read_checkpoint,
        read_rng,
        rng_file,
        step_uri,
        write_marker,
    )

    job = str(tmp_path / "job")
    uri = step_uri(job, 3)
    for r in range(2):
        write_bytes(join(uri, rng_file(r)), f"rng state of rank {r}".encode())
    write_bytes(join(uri, "state.json"), b"{}")
    marker = write_marker(uri, step=3, world=2, files={"state.json": b"{}"}, resume_digest="d", save_seconds=0.1)
    assert set(marker["files"]) == {"state.json", "rng-rank-0.pt", "rng-rank-1.pt"}
    ref = latest_checkpoint(job)
    blobs = read_checkpoint(ref)
    assert read_rng(ref, 1, blobs) == b"rng state of rank 1"
    (tmp_path / "job/checkpoints/step-3/rng-rank-1.pt").write_bytes(b"rng state of rank X")  # same size, other bytes
    with pytest.raises(StorageError, match="rng-rank-1.pt: does not match its checkpoint marker"):
        read_checkpoint(ref)


# -- backfill never delays the head, over time --------------------------------------------------


def _tenants(text: str, backfill: bool):
    return load_tenants(text.replace("backfill: true", f"backfill: {str(backfill).lower()}"))


def _run(jobs, cluster, tenants, estimates=True):
    """The simulation, and the first job the policy ever reserved for (the first blocked head)."""
    heads: list[str] = []

    def policy(*args, **kwargs):
        d = decide(*args, **kwargs)
        if d.reserved_for and not heads:
            heads.append(d.reserved_for)
        return d

    return Simulator(jobs, cluster, tenants, policy, "lorafarm", estimates=estimates).run(), heads


ONE = "policy: {aging_per_hour: 0, backfill: true}\ntenants: {default: {weight: 1}}"


def sj(job_id, at, gpus, duration, cpus=1.0, workers=1):
    return SimJob(job_id, "x", at, workers, gpus, duration, None, cpus)


def test_backfill_over_a_timeline_leaves_the_heads_start_where_it_was():
    """4 GPUs, 16 CPUs. A holds 2 GPUs until 100; H wants all 4 from t=1. While H waits, jobs
    arrive over time: the CPU-only ones run around it, the GPU ones wait, and H starts at 100
    exactly as it does with backfill off."""
    jobs = [sj("A", 0, 2, 100), sj("H", 1, 4, 50),
            sj("cpu1", 2, 0, 30, cpus=4), sj("gpu1", 3, 1, 5), sj("cpu2", 40, 0, 30, cpus=8),
            sj("gpu2", 60, 2, 10), sj("cpu3", 95, 0, 200, cpus=2)]
    cluster = ClusterSpec(4, cpus=16)
    on, heads = _run(jobs, cluster, _tenants(ONE, True), estimates=False)
    off, _ = _run(jobs, cluster, _tenants(ONE, False), estimates=False)
    assert heads == ["H"]
    assert on.outcomes["H"].start == off.outcomes["H"].start == 100
    backfilled = [k for k, o in on.outcomes.items() if o.start < on.outcomes["H"].start and k != "A"]
    assert sorted(backfilled) == ["cpu1", "cpu2", "cpu3"]  # backfill did happen, three times over the wait
    assert all(off.outcomes[k].start >= 100 for k in backfilled)  # without it they waited behind H
    assert on.outcomes["gpu1"].start >= 100 and on.outcomes["gpu2"].start >= 100  # never on the head's GPUs


def _timeline(seed: int) -> list[SimJob]:
    rnd = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(30):
        t += rnd.expovariate(1 / 20)
        gpus, workers = rnd.choice([0, 1, 2, 4, 8]), 1
        if gpus == 8 and rnd.random() < 0.5:
            workers, gpus = 2, 4
        jobs.append(SimJob(f"j{i}", "x", round(t, 3), workers, gpus, round(rnd.uniform(5, 200), 3), None,
                           rnd.choice([1.0, 2.0, 4.0])))
    return jobs


TIMELINE_CLUSTER = ClusterSpec(16, cpus=32, nodes=2)


def test_the_random_timelines_do_backfill():
    """Not vacuous: on most timelines some job starts earlier with backfill than without."""
    earlier = 0
    for seed in range(20):
        jobs = _timeline(seed)
        on, _ = _run(jobs, TIMELINE_CLUSTER, _tenants(ONE, True), estimates=False)
        off, _ = _run(jobs, TIMELINE_CLUSTER, _tenants(ONE, False), estimates=False)
        earlier += any(on.outcomes[j.job_id].start < off.outcomes[j.job_id].start for j in jobs)
    assert earlier >= 15


@pytest.mark.parametrize("seed", range(40))
def test_backfill_never_delays_the_first_blocked_head_on_random_timelines(seed):
    jobs, cluster = _timeline(seed), TIMELINE_CLUSTER
    on, heads = _run(jobs, cluster, _tenants(ONE, True), estimates=False)
    off, heads_off = _run(jobs, cluster, _tenants(ONE, False), estimates=False)
    if not heads:
        pytest.skip("this timeline never blocks")
    assert heads_off == heads
    assert on.outcomes[heads[0]].start == off.outcomes[heads[0]].start


@pytest.mark.parametrize("seed", range(4))
def test_backfill_never_delays_the_first_blocked_head_with_many_tenants(seed):
    """Generated traces: 6 tenants with quotas and weights, 8 nodes, gangs up to 16 GPUs, aging."""
    text = tenants_yaml(tenants=6, gpus=64, quota_fraction=0.5, heavy_weight=2)
    jobs = generate(150, seed=seed, gpus=64, tenants=6, load=1.0, max_gang=16)
    cluster = ClusterSpec(64, nodes=8)
    on, heads = _run(jobs, cluster, _tenants(text, True))
    off, heads_off = _run(jobs, cluster, _tenants(text, False))
    assert heads and heads_off == heads
    assert on.outcomes[heads[0]].start == off.outcomes[heads[0]].start


# -- the example tenants file -------------------------------------------------------------------


def test_the_example_tenants_file_parses_as_documented():
    from lorafarm.spec.tenants import Guarantee, PolicySettings, Quota, Tenant, TenantsConfig

    path = ROOT / "jobs/tenants.yaml"
    text = path.read_text()
    config = load_tenants(text)  # what `lorafarm serve --tenants FILE` does with the file's text
    assert config == load_tenants(path)
    assert config.tenant_names() == ["acme"]
    assert config.weight("acme") == 2 and config.quota("acme").gpus == 16 and config.guaranteed("acme").gpus == 2
    assert config.quota("someone-else").max_queued == 20  # unlisted tenants get the default entry
    assert config.allowed_priorities("someone-else") == {"low", "normal"}
    assert not config.allows_remote_code("acme") and config.policy.backfill and not config.policy.preemption
    for model in (TenantsConfig, PolicySettings, Tenant, Quota):  # every field is shown (and commented)
        for name in model.model_fields:
            assert f"{name}:" in text, f"jobs/tenants.yaml does not show {model.__name__}.{name}"
    assert "guaranteed:" in text and set(Guarantee.model_fields) <= set(Quota.model_fields)


# -- bad input at the door: the example tenants file spoiled, and run --resume without a checkpoint --

CLI = [sys.executable, "-m", "lorafarm.cli.main"]


def _cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # were anything to reach for a cluster, it would fail fast
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


SPOILED_TENANTS = [  # (what is changed in jobs/tenants.yaml, text the one error line must hold)
    (("    weight: 2\n", "    weight: -2\n"), "tenants.acme.weight"),
    (("    weight: 2\n", "    wieght: 2\n"), "tenants.acme.wieght"),
    (("default_priority: normal\n", "default_priority: urgent\n"), "default_priority"),
    (("  aging_per_hour: 100\n", "  aging_per_hour: soon\n"), "policy.aging_per_hour"),
    (("      max_queued: 20 ", "      max_queued: -1 "), "tenants.default.quota.max_queued"),
]


@pytest.mark.parametrize(("change", "named"), SPOILED_TENANTS, ids=[n for _, n in SPOILED_TENANTS])
def test_serve_refuses_a_spoiled_tenants_file_naming_the_field_and_starts_nothing(tmp_path, change, named):
    old, new = change
    text = (ROOT / "jobs/tenants.yaml").read_text()
    assert old in text
    bad = tmp_path / "tenants.yaml"
    bad.write_text(text.replace(old, new, 1))
    proc = _cli("serve", "--store", str(tmp_path / "store"), "--tenants", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors and any(named in line for line in errors), out
    assert not (tmp_path / "store").exists()  # nothing written, nothing started


def test_run_resume_of_a_job_without_a_checkpoint_is_refused_at_the_door(tmp_path):
    store = tmp_path / "store"
    proc = _cli("run", str(ROOT / "jobs/quickstart.yaml"), "--store", str(store), "--resume", "no-such-job",
                "--set", "training.max_steps=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and "no-such-job" in errors[0], out
    jobs = [p.name for p in (store / "demo").glob("*") if not p.name.startswith("_")] if (store / "demo").exists() else []
    assert jobs == []  # no job entry written (a tokenization cache under demo/_cache/ may be)
