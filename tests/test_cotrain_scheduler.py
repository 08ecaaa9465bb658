"""Co-training through the real scheduler (`lorafarm serve` on a real Ray head): jobs of
co-training tenants queued together train as one pack, each a job of its own; a member
cancelled halfway leaves alone; the others' adapters equal the same spec trained alone (a
tenant without ``co_training`` is never packed, so its job is the solo reference)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import quickstart_spec, wait_for
from safetensors.torch import load_file
from test_scheduler_tenants import _jobs, _submit_all

pytestmark = pytest.mark.integration

TENANTS = textwrap.dedent("""
    policy: {co_training_join_after_s: 0}
    tenants:
      default: {weight: 1}
      alpha: {co_training: true}
      beta:  {co_training: true, quota: {cpus: 1}}
      delta: {co_training: true}
      gamma: {}
      ops:   {}
""")


def _spec(tenant: str, name: str, data: Path, *, steps: int = 4, r: int = 8, lr: float = 2e-3,
          cpus: float = 1) -> dict:
    return quickstart_spec(tenant, name, data,
                           training={"max_steps": steps, "warmup_steps": 1, "eval_every_steps": 0, "seq_len": 64,
                                     "global_batch_size": 4, "micro_batch_size": 2, "learning_rate": lr},
                           lora={"r": r, "alpha": 2 * r, "dropout": 0.0},
                           resources={"workers": 1, "cpus_per_worker": cpus})


def _adapter(job: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(job["adapter_uri"].removeprefix("file://")) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def head(serve_cluster):
    return serve_cluster(TENANTS, 3)  # 2 CPUs for jobs (one kept for Ray Data)


def _after_blocker(head, specs: list[dict]) -> list[str]:
    """Submit ``specs`` while a blocker holds the cluster, then cancel it: they are queued together."""
    blocker = _submit_all(head, [_spec("ops", "blocker", head.tmp / "small.jsonl", steps=2000, cpus=2)])[0]
    wait_for(lambda: _jobs(head)[blocker]["state"] == "RUNNING", 120, "the blocker to start")
    ids = _submit_all(head, specs)
    assert all(_jobs(head)[j]["state"] == "QUEUED" for j in ids)
    head.lorafarm("cancel", blocker, check=True)
    return ids


def _ended(head, ids, timeout=600) -> dict[str, dict]:
    def ended():
        jobs = _jobs(head)
        return jobs if all(jobs[i]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for i in ids) else None

    return wait_for(ended, timeout, f"{len(ids)} jobs to end", interval=2.0)


def _worst(ours: dict, alone: dict) -> float:
    assert ours.keys() == alone.keys()
    return max(((ours[n] - alone[n]).norm() / alone[n].norm().clamp_min(1e-12)).item() for n in ours)


@pytest.mark.timeout(1200)
def test_a_pack_through_the_scheduler_takes_in_a_waiting_job_loses_a_cancelled_one_and_equals_alone(head):
    data = head.tmp / "small.jsonl"
    # alpha: a long job of another rank and learning rate, cancelled halfway; beta, gamma and delta:
    # the same spec — beta co-trained from the start, delta joining the running pack, gamma alone
    # (its tenant does not co-train), the reference. ops' holder (never packed) fills the cluster
    alpha, beta, holder = _after_blocker(head, [_spec("alpha", "a-long", data, steps=40, r=4, lr=5e-3),
                                                _spec("beta", "b-same", data, steps=8),
                                                _spec("ops", "holder", data, steps=2000)])
    wait_for(lambda: all(_jobs(head)[j]["state"] == "RUNNING" for j in (alpha, beta, holder)), 120,
             "the pack and the holder to start")
    jobs = _jobs(head)
    assert jobs[alpha]["pack_members"] == 2 and jobs[beta]["pack_members"] == 2 and jobs[holder]["pack_members"] is None
    usage = {r["tenant"]: r["usage"] for r in head.lorafarm_json("tenants")}
    assert usage["beta"]["cpus"] == pytest.approx(0.5) and usage["alpha"]["cpus"] == pytest.approx(0.5)

    wait_for(lambda: (_jobs(head)[beta].get("progress") or {}).get("step", 0) >= 2, 240, "the pack's step 2")
    # the cluster is full (the pack and the holder): delta waits, then joins the running pack
    (delta,) = _submit_all(head, [_spec("delta", "d-join", data, steps=8)])
    wait_for(lambda: _jobs(head)[delta]["state"] == "RUNNING", 240, "delta to join the pack")
    head.lorafarm("cancel", holder, check=True)
    (gamma,) = _submit_all(head, [_spec("gamma", "g-same", data, steps=8)])
    jobs = _jobs(head)
    assert all(jobs[j]["pack_members"] == 3 for j in (alpha, beta, delta)), [
        (jobs[j]["pack_members"], [(e["kind"], e["message"]) for e in head.events(j)]) for j in (beta, delta, holder)]
    events = [json.loads(line) for line in head.lorafarm("events", beta, "--json", check=True).stdout.splitlines()]
    assert any("join its pack" in e["message"] for e in events)
    assert any("for its pack to take in new members" in e["message"] for e in events)
    started = [e["message"] for e in events if e["kind"] == "started"]
    assert len(started) == 2 and all("co-trained: one of" in m for m in started)
    assert not any(j in e["message"] for e in events for j in (alpha, delta))  # never who

    wait_for(lambda: (_jobs(head)[delta].get("progress") or {}).get("step", 0) >= 2, 240, "delta's step 2")
    head.lorafarm("cancel", alpha, check=True)  # halfway: alpha leaves, the others train on in the pack

    done = _ended(head, (alpha, beta, gamma, delta))
    assert done[alpha]["state"] == "CANCELLED" and done[gamma]["pack_members"] is None
    assert all(done[j]["state"] == "SUCCEEDED" for j in (beta, gamma, delta)), {
        j: (done[j]["state"], done[j]["reason"]) for j in (beta, gamma, delta)}
    assert done[beta]["metrics"].get("co_trained") == {"members": 3}
    alone = _adapter(done[gamma])
    worst = {"beta (packed, regrouped)": _worst(_adapter(done[beta]), alone),
             "delta (joined)": _worst(_adapter(done[delta]), alone)}
    print(f"co-trained vs alone, worst relative differences: {worst}")
    assert max(worst.values()) <= 1e-5
