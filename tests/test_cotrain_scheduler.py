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
    tenants:
      default: {weight: 1}
      alpha: {co_training: true}
      beta:  {co_training: true, quota: {cpus: 1}}
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


@pytest.mark.timeout(900)
def test_a_pack_through_the_scheduler_member_cancelled_halfway_the_other_equals_alone(serve_cluster):
    head = serve_cluster(TENANTS, 3)  # 2 CPUs for jobs (one kept for Ray Data)
    data = head.tmp / "small.jsonl"
    blocker = _submit_all(head, [_spec("ops", "blocker", data, steps=2000, cpus=2)])[0]
    wait_for(lambda: _jobs(head)[blocker]["state"] == "RUNNING", 120, "the blocker to start")
    # alpha: a longer job of another rank and learning rate, cancelled halfway; beta and gamma:
    # the same spec, beta co-trained,
    # gamma alone (its tenant does not co-train)
    alpha, beta, gamma = _submit_all(head, [_spec("alpha", "a-long", data, steps=40, r=4, lr=5e-3),
                                            _spec("beta", "b-same", data, steps=8), _spec("gamma", "g-same", data, steps=8)])
    assert all(_jobs(head)[j]["state"] == "QUEUED" for j in (alpha, beta, gamma))
    head.lorafarm("cancel", blocker, check=True)

    wait_for(lambda: all(_jobs(head)[j]["state"] == "RUNNING" for j in (alpha, beta)), 120, "the pack to start")
    jobs = _jobs(head)
    assert jobs[alpha]["pack_members"] == 2 and jobs[beta]["pack_members"] == 2
    usage = {r["tenant"]: r["usage"] for r in head.lorafarm_json("tenants")}
    assert usage["beta"]["cpus"] == pytest.approx(0.5) and usage["alpha"]["cpus"] == pytest.approx(0.5)
    wait_for(lambda: (_jobs(head)[alpha].get("progress") or {}).get("step", 0) >= 2, 240, "alpha's step 2")
    head.lorafarm("cancel", alpha, check=True)  # halfway: alpha leaves, beta trains on in the pack
    assert _jobs(head)[beta]["state"] == "RUNNING"

    def ended():
        jobs = _jobs(head)
        return jobs if all(jobs[i]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for i in (alpha, beta, gamma)) \
            else None

    done = wait_for(ended, 600, "the three jobs to end", interval=2.0)
    assert done[alpha]["state"] == "CANCELLED"
    assert done[beta]["state"] == "SUCCEEDED", done[beta]["reason"]
    assert done[gamma]["state"] == "SUCCEEDED", done[gamma]["reason"]
    assert done[gamma]["pack_members"] is None  # never packed: gamma has no co_training
    assert done[beta]["metrics"].get("co_trained") == {"members": 2}
    events = [json.loads(line) for line in head.lorafarm("events", beta, "--json", check=True).stdout.splitlines()]
    started = [e["message"] for e in events if e["kind"] == "started"]
    assert started and "co-trained: one of 2 jobs" in started[-1] and alpha not in " ".join(e["message"] for e in events)

    ours, alone = _adapter(done[beta]), _adapter(done[gamma])
    assert ours.keys() == alone.keys()
    worst = max(((ours[n] - alone[n]).norm() / alone[n].norm().clamp_min(1e-12)).item() for n in ours)
    print(f"co-trained vs alone, worst relative difference: {worst:.2e}")
    assert worst <= 1e-5
