"""The scheduler on a real `ray start --head` cluster, driven the way users drive it: `ray job
submit -- lorafarm submit ... --wait`, `ray job stop`, `lorafarm serve/list/status/events/pull`."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from ray_head import ROOT, RayHead, wait_until

pytestmark = pytest.mark.integration

QUICK = ["--set", "training.max_steps=2", "--set", "training.warmup_steps=1", "--set", "training.eval_every_steps=0",
         "--set", "resources.workers=1", "--set", "training.seq_len=64", "--set", "training.global_batch_size=4",
         "--set", "training.micro_batch_size=4"]


@pytest.fixture(scope="module")
def head():
    tmp = Path(tempfile.mkdtemp(prefix="lfh", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = RayHead(tmp, num_cpus=6)
    cluster.store = str(tmp / "store")
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def _serve(head, *extra: str) -> dict:
    return head.lorafarm_json("serve", "--store", head.store, *extra, timeout=180)


def _state(head, job_id: str) -> dict:
    return head.lorafarm_json("status", job_id)


def _terminal(head, job_id: str):
    s = _state(head, job_id)
    return s if s["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None


def test_ray_job_submit_wait_pull_and_stop(head, tmp_path):
    assert _serve(head)["created"] is True
    assert _serve(head)["created"] is False  # harmless when already running

    spec = str(ROOT / "jobs/quickstart.yaml")
    proc = head.ray("job", "submit", "--address", head.dashboard, "--",
                    "lorafarm", "submit", spec, *QUICK, "--wait", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("submitted "))
    status = _state(head, job_id)
    assert status["state"] == "SUCCEEDED"
    for key in ("job_id", "tenant", "state", "adapter_uri", "reason", "submitted_at", "started_at", "ended_at"):
        assert key in status
    assert status["submitted_at"] <= status["started_at"] <= status["ended_at"]

    dest = tmp_path / "adapter"
    pulled = head.lorafarm("pull", job_id, str(dest), "--store", head.store, "--tenant", "demo")
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((dest / "adapter_config.json").read_text())["r"] == 16

    events = [json.loads(line) for line in head.lorafarm("events", job_id, "--json").stdout.splitlines()]
    assert [e["state"] for e in events if e["kind"] in ("state", "started")] == ["RUNNING", "SUCCEEDED"]

    # a second submission, stopped through Ray's own CLI, ends CANCELLED and publishes nothing
    ray_job = f"lf-stop-{int(time.time())}"
    proc = head.ray("job", "submit", "--address", head.dashboard, "--submission-id", ray_job, "--no-wait", "--",
                    "lorafarm", "submit", spec, *QUICK, "--set", "training.max_steps=400", "--wait")
    assert proc.returncode == 0, proc.stderr

    def running_job():
        jobs = head.lorafarm_json("list", "--state", "RUNNING")
        return jobs[0]["job_id"] if jobs else None

    second = wait_until(running_job, 240, "the second job to start")
    wait_until(lambda: (_state(head, second).get("progress") or {}).get("step"), 480, "a training step")
    t0 = time.time()
    assert head.ray("job", "stop", "--address", head.dashboard, ray_job).returncode == 0
    final = wait_until(lambda: _terminal(head, second), 30, "the cancelled state")
    assert final["state"] == "CANCELLED" and final["adapter_uri"] is None
    # its workers and placement group are gone within 30 s
    probe = (
        "import ray, time, sys\nfrom ray.util.state import list_actors\n"
        "ray.init(log_to_driver=False)\n"
        f"deadline = {t0} + 30\n"
        "while True:\n"
        "    live = [p for p in ray.util.placement_group_table().values() if p['state'] != 'REMOVED']\n"
        "    actors = [a for a in list_actors(filters=[('state', '=', 'ALIVE')])\n"
        "              if a.class_name not in ('Scheduler', 'JobSupervisor', 'PlacementGroupCleaner')\n"
        "              and not a.class_name.startswith('_')]\n"
        "    if not live and not actors: sys.exit(0)\n"
        "    if time.time() > deadline: break\n"
        "    time.sleep(0.5)\n"
        "print('left after', round(time.time() - " + repr(t0) + "), 's:', live, actors); sys.exit(1)\n"
    )  # Ray Train's own PlacementGroupCleaner (0 CPUs) may outlive the job by a poll; it holds nothing
    probe_run = head.python(probe, timeout=180)
    assert probe_run.returncode == 0, probe_run.stdout + probe_run.stderr[-2000:]
    assert not (Path(head.store) / "demo" / second / "adapter" / "lorafarm.json").exists()


def test_status_is_fast_while_jobs_train(head):
    _serve(head)
    job = head.lorafarm_json("submit", str(ROOT / "jobs/quickstart.yaml"), *QUICK, "--set", "training.max_steps=30")
    wait_until(lambda: _state(head, job["job_id"])["state"] == "RUNNING", 60, "the job to start")
    code = (
        "import time, statistics, ray\n"
        "from lorafarm.scheduler.client import scheduler\n"
        f"h = scheduler(); jid = {job['job_id']!r}\n"
        "ray.get(h.status.remote(jid))\n"
        "times = []\n"
        "for _ in range(40):\n"
        "    t = time.perf_counter(); ray.get(h.status.remote(jid)); times.append(time.perf_counter() - t)\n"
        "    time.sleep(0.1)\n"
        "print(statistics.median(times), max(times))\n"
    )
    out = head.python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    median, worst = map(float, out.stdout.split()[-2:])
    assert median < 0.1, f"status median {median * 1000:.0f} ms while a job trains"
    head.lorafarm("cancel", job["job_id"], check=True)
