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


@pytest.mark.timeout(900)
def test_a_pack_through_the_scheduler_member_cancelled_halfway_the_other_equals_alone(head):
    data = head.tmp / "small.jsonl"
    # alpha: a longer job of another rank and learning rate, cancelled halfway; beta and gamma:
    # the same spec, beta co-trained,
    # gamma alone (its tenant does not co-train)
    alpha, beta, gamma = _after_blocker(head, [_spec("alpha", "a-long", data, steps=40, r=4, lr=5e-3),
                                               _spec("beta", "b-same", data, steps=8),
                                               _spec("gamma", "g-same", data, steps=8)])

    wait_for(lambda: all(_jobs(head)[j]["state"] == "RUNNING" for j in (alpha, beta)), 120, "the pack to start")
    jobs = _jobs(head)
    assert jobs[alpha]["pack_members"] == 2 and jobs[beta]["pack_members"] == 2
    usage = {r["tenant"]: r["usage"] for r in head.lorafarm_json("tenants")}
    assert usage["beta"]["cpus"] == pytest.approx(0.5) and usage["alpha"]["cpus"] == pytest.approx(0.5)
    wait_for(lambda: (_jobs(head)[alpha].get("progress") or {}).get("step", 0) >= 2, 240, "alpha's step 2")
    head.lorafarm("cancel", alpha, check=True)  # halfway: alpha leaves, beta trains on in the pack
    assert _jobs(head)[beta]["state"] == "RUNNING"

    done = _ended(head, (alpha, beta, gamma))
    assert done[alpha]["state"] == "CANCELLED"
    assert done[beta]["state"] == "SUCCEEDED", done[beta]["reason"]
    assert done[gamma]["state"] == "SUCCEEDED", done[gamma]["reason"]
    assert done[gamma]["pack_members"] is None  # never packed: gamma has no co_training
    assert done[beta]["metrics"].get("co_trained") == {"members": 2}
    events = [json.loads(line) for line in head.lorafarm("events", beta, "--json", check=True).stdout.splitlines()]
    started = [e["message"] for e in events if e["kind"] == "started"]
    assert started and "co-trained: one of 2 jobs" in started[-1] and alpha not in " ".join(e["message"] for e in events)

    worst = _worst(_adapter(done[beta]), _adapter(done[gamma]))
    print(f"co-trained vs alone, worst relative difference: {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.timeout(900)
def test_a_waiting_job_joins_a_running_pack_and_every_adapter_still_equals_alone(head):
    data = head.tmp / "small.jsonl"
    alpha, beta, gamma = _after_blocker(head, [_spec("alpha", "a-join", data, steps=40, r=4, lr=5e-3),
                                               _spec("beta", "b-join", data, steps=8),
                                               _spec("gamma", "g-join", data, steps=8)])
    wait_for(lambda: (_jobs(head)[beta].get("progress") or {}).get("step", 0) >= 2, 240, "the pack's step 2")
    # the cluster is full (the pack and gamma): delta waits, then joins the running pack
    (delta,) = _submit_all(head, [_spec("delta", "d-join", data, steps=8)])
    wait_for(lambda: _jobs(head)[delta]["state"] == "RUNNING", 240, "delta to join the pack")
    jobs = _jobs(head)
    assert all(jobs[j]["pack_members"] == 3 for j in (alpha, beta, delta)), {j: jobs[j]["pack_members"]
                                                                                for j in (alpha, beta, delta)}
    events = [json.loads(line) for line in head.lorafarm("events", beta, "--json", check=True).stdout.splitlines()]
    assert any("join its pack" in e["message"] for e in events)
    assert any("for its pack to take in new members" in e["message"] for e in events)
    done = _ended(head, (beta, gamma, delta))
    assert all(done[j]["state"] == "SUCCEEDED" for j in (beta, gamma, delta)), {
        j: (done[j]["state"], done[j]["reason"]) for j in (beta, gamma, delta)}
    head.lorafarm("cancel", alpha, check=True)
    alone = _adapter(done[gamma])
    worst = {"beta (regrouped)": _worst(_adapter(done[beta]), alone), "delta (joined)": _worst(_adapter(done[delta]),
                                                                                            alone)}
    print(f"joined a running pack vs alone, worst relative differences: {worst}")
    assert max(worst.values()) <= 1e-5
