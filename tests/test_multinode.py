"""The scheduler on a real two-node Ray cluster (two 2-CPU raylets on this machine), driven the
way users drive it (`lorafarm serve/submit/status/events/cancel`): node-aware admission and
submit refusals, a gang spread over both nodes, fragmentation, and a node killed mid-job."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from multinode_cluster import TwoNodeCluster
from ray_head import ROOT, wait_until
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

SPEC = str(ROOT / "jobs/quickstart.yaml")
# dropout 0 (quickstart), 8 steps of global batch 4, a checkpoint every 2 steps
BASE = ["--set", "training.warmup_steps=1", "--set", "training.eval_every_steps=0", "--set", "training.seq_len=64",
        "--set", "training.global_batch_size=4", "--set", "training.micro_batch_size=2",
        "--set", "training.checkpoint_every_steps=2", "--set", "dataset.eval_fraction=0"]
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def _job(cluster, name: str, workers: int, cpus: float, steps: int, *extra: str) -> str:
    out = cluster.lorafarm_json("submit", SPEC, *BASE, "--set", f"name={name}", "--set", f"training.max_steps={steps}",
                                "--set", f"resources.workers={workers}", "--set", f"resources.cpus_per_worker={cpus}",
                                *extra)
    return out["job_id"]


def _ended(cluster, job_id: str, timeout: float = 420) -> dict:
    return wait_until(lambda: (s := cluster.status(job_id))["state"] in TERMINAL and s, timeout, f"{job_id} to end")


def _adapter(cluster, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(cluster.store) / "demo" / job_id / "adapter/adapter_model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="lfm", dir="/tmp"))  # short: Ray's socket paths have a length limit
    c = TwoNodeCluster(tmp)
    c.lorafarm_json("serve", "--store", c.store, timeout=180)
    yield c
    c.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def one_worker(cluster):
    """The uninterrupted one-worker run every multi-node adapter is compared with."""
    job = _job(cluster, "one", 1, 2, 8)
    status = _ended(cluster, job)
    assert status["state"] == "SUCCEEDED", status
    return _adapter(cluster, job)


def test_a_worker_larger_than_every_node_is_refused_at_submit(cluster):
    proc = cluster.lorafarm("submit", SPEC, *BASE, "--set", "resources.workers=1",
                            "--set", "resources.cpus_per_worker=3")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "resources.cpus_per_worker" in proc.stderr and "largest: 2 CPUs, 0 GPUs" in proc.stderr, proc.stderr
    proc = cluster.lorafarm("submit", SPEC, *BASE, "--set", "resources.workers=3",
                            "--set", "resources.cpus_per_worker=2", "--set", "training.global_batch_size=6")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "resources.workers" in proc.stderr and "at most 2 fit" in proc.stderr, proc.stderr
    assert cluster.lorafarm_json("list") == [] or all(j["state"] != "QUEUED" for j in cluster.lorafarm_json("list"))


def test_a_two_node_gang_spreads_and_matches_the_one_worker_run(cluster, one_worker):
    job = _job(cluster, "spread", 2, 2, 8)
    nodes = wait_until(lambda: (s := cluster.status(job))["nodes"] or (s["state"] in TERMINAL and ["ended"]),
                       300, "the workers to report their nodes")
    assert len({n["node_id"] for n in nodes}) == 2, nodes  # 2 CPUs per worker: one on each node
    assert {n["rank"] for n in nodes} == {0, 1} and all(n["ip"] for n in nodes)
    status = _ended(cluster, job)
    assert status["state"] == "SUCCEEDED", status
    placed = [e for e in cluster.events(job) if e["kind"] == "placed"]
    assert placed and len({n["node_id"] for n in placed[-1]["data"]["nodes"]}) == 2
    assert _max_diff(_adapter(cluster, job), one_worker) <= 1e-5  # the 1-vs-2-worker tolerance


def test_fragmented_free_cpus_keep_a_larger_worker_queued_until_a_job_ends(cluster):
    a = _job(cluster, "frag-a", 1, 1, 400, "--set", "resources.placement=spread")
    b = _job(cluster, "frag-b", 1, 1, 400, "--set", "resources.placement=spread")
    for job in (a, b):
        wait_until(lambda job=job: cluster.status(job)["nodes"], 300, f"{job} to run")
    on = {cluster.status(j)["nodes"][0]["node_id"] for j in (a, b)}
    assert len(on) == 2  # one CPU free on each node, two free in total
    big = _job(cluster, "frag-big", 1, 2, 2)
    for _ in range(6):  # several scheduler ticks: it must not start unplaced
        assert cluster.status(big)["state"] == "QUEUED"
    cluster.lorafarm_json("cancel", a)
    status = _ended(cluster, big)
    assert status["state"] == "SUCCEEDED", status
    cluster.lorafarm_json("cancel", b)


def _after_checkpoint(cluster, job: str) -> int:
    return wait_until(lambda: (s := cluster.status(job))["state"] == "RUNNING" and s["nodes"]
                      and len({n["node_id"] for n in s["nodes"]}) == 2 and (s["last_checkpoint_step"] or 0) >= 2
                      and s["last_checkpoint_step"], 300, f"{job} to checkpoint on both nodes")


def test_node_loss_shrinks_an_elastic_job_and_requeues_a_rigid_one(cluster, one_worker):
    elastic = _job(cluster, "elastic", 2, 2, 8, "--set", "resources.min_workers=1")
    step = _after_checkpoint(cluster, elastic)
    cluster.kill_node()
    status = _ended(cluster, elastic)
    assert status["state"] == "SUCCEEDED", status
    events = cluster.events(elastic)
    kinds = [e["kind"] for e in events]
    assert "node_lost" in kinds and "resized" in kinds, kinds
    resized = next(e for e in events if e["kind"] == "resized")
    assert resized["data"]["from"] == 2 and resized["data"]["to"] == 1 and resized["data"]["step"] >= step
    assert any(e["kind"] == "resumed" and e["data"]["step"] == resized["data"]["step"] for e in events), events
    assert _max_diff(_adapter(cluster, elastic), one_worker) <= 1e-5

    cluster.add_node()
    rigid = _job(cluster, "rigid", 2, 2, 8)
    step = _after_checkpoint(cluster, rigid)
    cluster.kill_node()
    wait_until(lambda: cluster.status(rigid)["state"] == "QUEUED", 120, "the rigid job to return to QUEUED")
    kinds = [e["kind"] for e in cluster.events(rigid)]
    assert "node_lost" in kinds and "resized" not in kinds, kinds
    cluster.add_node()
    status = _ended(cluster, rigid)
    assert status["state"] == "SUCCEEDED", status
    events = cluster.events(rigid)
    assert any(e["kind"] == "resumed" and e["data"]["step"] >= step for e in events), events
    assert _max_diff(_adapter(cluster, rigid), one_worker) <= 1e-5
    # no record lost: every job submitted in this module is still listed
    names = {j["name"] for j in cluster.lorafarm_json("list")}
    assert {"one", "spread", "elastic", "rigid"} <= names
