"""Fault tolerance on a real Ray cluster with the scheduler: a training worker killed mid-job,
a lower-priority job preempted for a higher one, and the scheduler itself killed and started
again while a job trains. Each ends SUCCEEDED with the adapter of an uninterrupted run (dropout
on), and their events say what happened."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import quickstart_spec
from ray_head import wait_until
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

TENANTS = textwrap.dedent("""
    priority_classes: {low: 0, high: 1000}
    default_priority: low
    policy: {preemption: true}
    tenants:
      default: {weight: 1}
      batch: {weight: 1, priorities: [low]}
      urgent: {weight: 1, priorities: [high], default_priority: high}
""")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def _spec(head, tenant: str, name: str, steps: int = 24) -> dict:
    """24 steps, each held to at least 2 s by the test cluster's step floor (tests/ray_head.py; the
    tiny model computes one in ~0.2 s): a kill or a preemption triggered at step 3-4 lands mid-run
    with some 40 s to spare, however slow the CLI calls that trigger it are."""
    return quickstart_spec(
        tenant, name, head.tmp / "small.jsonl",
        lora={"dropout": 0.1},  # masks are seeded per row and step: a restart must not change them
        training={"max_steps": steps, "warmup_steps": 1, "eval_every_steps": 0, "seq_len": 64, "global_batch_size": 4,
                  "micro_batch_size": 1, "checkpoint_every_steps": 4, "keep_last": 2},
        resources={"workers": 2, "cpus_per_worker": 1},
    )


@pytest.fixture(scope="module")
def cluster(serve_cluster):
    return serve_cluster(TENANTS, 3)


def _finished(head, job_id: str, timeout: float = 600) -> dict:
    return wait_until(lambda: (s := head.status(job_id))["state"] in TERMINAL and s, timeout, f"{job_id} to end",
                      interval=1.0)


def _adapter(head, tenant: str, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(head.store) / tenant / job_id / "adapter/adapter_model.safetensors"))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    job = cluster.submit_spec(_spec(cluster, "batch", "whole"))
    final = _finished(cluster, job)
    assert final["state"] == "SUCCEEDED", final["reason"]
    kinds = [e["kind"] for e in cluster.events(job)]
    assert "failure" not in kinds and "resumed" not in kinds
    return _adapter(cluster, "batch", job)


def _worker_pids(head) -> list[int]:
    code = (
        "import json, ray\nfrom ray.util.state import list_actors\nray.init(log_to_driver=False)\n"
        "print(json.dumps([a.pid for a in list_actors(filters=[('class_name', '=', 'RayTrainWorker'),"
        " ('state', '=', 'ALIVE')])]))\n"
    )
    out = head.python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_killed_worker_resumes_from_its_checkpoint_with_the_same_adapter(cluster, uninterrupted):
    job = cluster.submit_spec(_spec(cluster, "batch", "killed"))
    wait_until(lambda: (cluster.status(job).get("last_checkpoint_step") or 0) >= 4, 480, "a checkpoint at step 4")
    pids = _worker_pids(cluster)
    assert len(pids) == 2
    killed_at = time.time()
    os.kill(pids[-1], signal.SIGKILL)
    final = _finished(cluster, job)
    assert final["state"] == "SUCCEEDED", final["reason"]
    events = cluster.events(job)
    failures = [e for e in events if e["kind"] == "failure"]
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert failures and resumed, [(e["kind"], e["message"]) for e in events]
    assert resumed[-1]["data"]["step"] >= 4 and resumed[-1]["time"] > killed_at
    print(f"worker loss to training again: {resumed[-1]['time'] - killed_at:.1f} s")
    assert _max_diff(_adapter(cluster, "batch", job), uninterrupted) <= 1e-6


def test_a_higher_class_preempts_a_lower_one_which_resumes_exactly(cluster, uninterrupted):
    low = cluster.submit_spec(_spec(cluster, "batch", "preempted"))
    wait_until(lambda: ((cluster.status(low).get("progress") or {}).get("step") or 0) >= 3, 480, "low to train")
    high = cluster.submit_spec(_spec(cluster, "urgent", "urgent", steps=2))
    high_final = _finished(cluster, high)
    assert high_final["state"] == "SUCCEEDED", high_final["reason"]
    low_final = _finished(cluster, low)
    assert low_final["state"] == "SUCCEEDED", low_final["reason"]

    events = cluster.events(low)
    kinds = [e["kind"] for e in events]
    assert kinds.index("preempting") < kinds.index("preempted") < kinds.index("resumed"), kinds
    preempted = next(e for e in events if e["kind"] == "preempted")
    resumed = next(e for e in events if e["kind"] == "resumed")
    assert preempted["state"] == "QUEUED" and resumed["data"]["step"] >= 3
    assert kinds.count("started") == 2
    # the high job ran while the low one waited: it started after the preemption, ended before the resume
    assert preempted["time"] <= high_final["started_at"] <= high_final["ended_at"] <= resumed["time"]
    assert _max_diff(_adapter(cluster, "batch", low), uninterrupted) <= 1e-6


def test_a_scheduler_killed_mid_job_recovers_it_with_the_same_adapter(cluster, uninterrupted):
    """Last in this module: it kills the scheduler (and starts it again from the store)."""
    job = cluster.submit_spec(_spec(cluster, "batch", "recovered"))
    wait_until(lambda: (cluster.status(job).get("last_checkpoint_step") or 0) >= 4, 480, "a checkpoint at step 4")
    kill = cluster.python("import ray\nray.init(log_to_driver=False)\n"
                          "ray.kill(ray.get_actor('scheduler', namespace='lorafarm'), no_restart=True)\n")
    assert kill.returncode == 0, kill.stderr[-2000:]
    out = cluster.lorafarm_json("serve", "--store", cluster.store, "--tenants", str(cluster.tmp / "tenants.yaml"),
                                "--reserve-cpus", "1")
    assert out["created"] is True
    final = _finished(cluster, job)
    assert final["state"] == "SUCCEEDED", final["reason"]
    events = cluster.events(job)
    kinds = [e["kind"] for e in events]
    assert "recovered" in kinds and kinds.count("started") == 2, kinds
    resumed = [e["data"]["step"] for e in events if e["kind"] == "resumed"]
    assert resumed and resumed[-1] >= 4, [(e["kind"], e["message"]) for e in events]
    assert _max_diff(_adapter(cluster, "batch", job), uninterrupted) <= 1e-6
