"""Many tenants on one real Ray cluster: quotas, weighted fair share, a broken job that fails
alone, and a scheduler killed mid-flight and recovered. (Ray token auth: tests/test_ray_token_auth.py.)"""

from __future__ import annotations

import collections
import json
import textwrap
import time
from pathlib import Path

import pytest
from helpers import ROOT, quickstart_spec
from helpers import wait_for as wait_until

pytestmark = pytest.mark.integration

TENANTS = textwrap.dedent("""
    tenants:
      default: {weight: 1}
      alpha: {weight: 1, quota: {cpus: 2}}
      beta:  {weight: 2, quota: {cpus: 3}}
      gamma: {weight: 1, quota: {cpus: 2}}
      ops:   {weight: 1}
""")
QUOTA = {"alpha": 2, "beta": 3, "gamma": 2}
CAPACITY = 4  # 5 logical CPUs, one kept for Ray Data tasks


def _spec(tenant: str, name: str, data: Path, **over) -> dict:
    """The quickstart cut to two tiny steps on one worker; ``section__field=value`` overrides one field."""
    sections = {"training": {"max_steps": 2, "warmup_steps": 1, "eval_every_steps": 0, "seq_len": 64,
                             "global_batch_size": 4, "micro_batch_size": 4},
                "resources": {"workers": 1, "cpus_per_worker": 1}}
    for path, value in over.items():
        section, field = path.split("__")
        sections.setdefault(section, {})[field] = value
    return quickstart_spec(tenant, name, data, **sections)


@pytest.fixture(scope="module")
def cluster(serve_cluster):
    """The shared `serve` head with TENANTS, plus broken.jsonl: chat rows as text, wrong for a chat spec."""
    head = serve_cluster(TENANTS, CAPACITY + 1)
    rows = [json.loads(line) for line in (head.tmp / "small.jsonl").read_text().splitlines()]
    (head.tmp / "broken.jsonl").write_text("".join(json.dumps({"text": r["messages"][0]["content"]}) + "\n"
                                                   for r in rows))
    return head


def _submit_all(head, specs: list[dict]) -> list[str]:
    """Submit from one driver, back to back, the way a script would."""
    code = (
        "import json, sys\n"
        "from lorafarm.scheduler.client import call\n"
        "specs = json.load(open(sys.argv[1]))\n"
        "print(json.dumps([call('submit', s)['job_id'] for s in specs]))\n"
    )
    path = head.tmp / f"specs-{time.time_ns()}.json"
    path.write_text(json.dumps(specs))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                          env=head.client_env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _jobs(head) -> dict[str, dict]:
    return {j["job_id"]: j for j in head.lorafarm_json("list")}


def _all_terminal(head, ids):
    jobs = _jobs(head)
    return jobs if all(jobs[i]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for i in ids) else None


def _intervals(head, job_id: str) -> list[tuple[float, float]]:
    """(start, end) of every RUNNING stretch, from the job's event timeline."""
    out, start = [], None
    for line in head.lorafarm("events", job_id, "--json", check=True).stdout.splitlines():
        e = json.loads(line)
        if e["state"] == "RUNNING" and start is None:
            start = e["time"]
        elif e["state"] != "RUNNING" and start is not None:
            out.append((start, e["time"]))
            start = None
    return out


@pytest.mark.timeout(1800)  # its own deadline for the eight jobs is 900 s, after the cluster starts
def test_quotas_fair_share_and_a_broken_job(cluster):
    tmp = cluster.tmp
    blocker = _submit_all(cluster, [_spec("ops", "blocker", tmp / "small.jsonl", training__max_steps=2000,
                                          resources__workers=2, resources__cpus_per_worker=2,
                                          training__global_batch_size=8)])[0]
    wait_until(lambda: _jobs(cluster)[blocker]["state"] == "RUNNING", 60, "the blocker to start")

    # alpha has one job more than its quota allows at once, beta fills its quota, gamma's second is broken
    specs, broken_name = [], "gamma-broken"
    for i in range(3):
        for tenant in ("alpha", "beta", "gamma"):
            if (tenant, i) == ("gamma", 2):
                continue
            name = broken_name if (tenant, i) == ("gamma", 1) else f"{tenant}-{i}"
            data = tmp / ("broken.jsonl" if name == broken_name else "small.jsonl")
            specs.append(_spec(tenant, name, data))
    ids = _submit_all(cluster, specs)
    assert len(set(ids)) == 8
    assert all(_jobs(cluster)[i]["state"] == "QUEUED" for i in ids)  # the blocker holds the whole cluster

    # over quota is refused at submit, naming the limit and the tenants-file field
    too_big = cluster.lorafarm("submit", str(ROOT / "jobs/quickstart.yaml"), "--set", "tenant=alpha",
                               "--set", "resources.workers=4")
    assert too_big.returncode == 2
    assert "quota" in too_big.stderr and "tenants.alpha.quota.cpus" in too_big.stderr

    cluster.lorafarm("cancel", blocker, check=True)
    jobs = wait_until(lambda: _all_terminal(cluster, ids), 900, "all eight jobs to end", interval=2.0)

    by_name = {j["name"]: j for j in jobs.values()}
    assert by_name[broken_name]["state"] == "FAILED"
    assert "broken.jsonl" in by_name[broken_name]["reason"]
    assert all(j["state"] == "SUCCEEDED" for i, j in jobs.items() if i in ids and j["name"] != broken_name), \
        {j["name"]: (j["state"], j["reason"]) for j in jobs.values()}

    intervals = {i: _intervals(cluster, i) for i in ids}
    # quotas were never exceeded and the cluster never over-committed, at any start instant
    starts = sorted(s for ivs in intervals.values() for s, _ in ivs)
    for t in starts:
        held = collections.Counter()
        for i, ivs in intervals.items():
            if any(s <= t < e for s, e in ivs):
                held[jobs[i]["tenant"]] += 1
        for tenant, cpus in held.items():
            assert cpus <= QUOTA[tenant], f"{tenant} held {cpus} CPUs at {t}"
        assert sum(held.values()) <= CAPACITY

    # the first admission after the blocker left filled the cluster by weighted fair share:
    # beta (weight 2) got two slots, alpha and gamma one each (FIFO, in submission order alpha-0,
    # beta-0, gamma-0, alpha-1, would have given alpha two)
    first = sorted(ids, key=lambda i: intervals[i][0][0])[:CAPACITY]
    assert intervals[first[-1]][0][0] - intervals[first[0]][0][0] < 2.0
    assert collections.Counter(jobs[i]["tenant"] for i in first) == {"beta": 2, "alpha": 1, "gamma": 1}

    usage = {r["tenant"]: r for r in cluster.lorafarm_json("tenants")}
    assert usage["beta"]["weight"] == 2 and usage["alpha"]["quota"]["cpus"] == 2
    assert all(r["running"] == 0 and r["queued"] == 0 for r in usage.values())


def test_scheduler_killed_and_recovered(cluster):
    tmp = cluster.tmp
    ids = _submit_all(cluster, [_spec("alpha", f"recover-{i}", tmp / "small.jsonl", training__max_steps=8,
                                      training__checkpoint_every_steps=2) for i in range(3)])
    wait_until(lambda: sum(_jobs(cluster)[i]["state"] == "RUNNING" for i in ids) == 2, 120, "two jobs running")
    # kill it once a running job has a checkpoint to resume from
    wait_until(lambda: any((j.get("last_checkpoint_step") or 0) >= 2 and j["state"] == "RUNNING"
                           for j in _jobs(cluster).values()), 300, "a checkpoint")
    before = _jobs(cluster)
    assert sorted(before[i]["state"] for i in ids) == ["QUEUED", "RUNNING", "RUNNING"]

    kill = cluster.python(
        "import ray\nray.init(log_to_driver=False)\n"
        "ray.kill(ray.get_actor('scheduler', namespace='lorafarm'), no_restart=True)\n")
    assert kill.returncode == 0, kill.stderr[-2000:]
    dead = cluster.lorafarm("list")
    assert dead.returncode == 1 and "lorafarm serve" in dead.stderr

    out = cluster.lorafarm_json("serve", "--store", cluster.store, "--tenants", str(tmp / "tenants.yaml"),
                                "--reserve-cpus", "1")
    assert out["created"] is True
    after = _jobs(cluster)
    assert set(before) == set(after)  # no record lost
    jobs = wait_until(lambda: _all_terminal(cluster, ids), 600, "the recovered jobs to end", interval=2.0)
    assert all(jobs[i]["state"] == "SUCCEEDED" for i in ids), {i: jobs[i]["reason"] for i in ids}
    resumed_any = False
    for i in ids:
        events = [json.loads(line) for line in cluster.lorafarm("events", i, "--json").stdout.splitlines()]
        kinds = [e["kind"] for e in events]
        was_running = before[i]["state"] == "RUNNING"
        assert ("recovered" in kinds) == was_running
        recovered = next((e for e in events if e["kind"] == "recovered"), None)
        if recovered and "resumes from checkpoint step" in recovered["message"]:
            step = int(recovered["message"].rsplit(" ", 1)[-1])
            assert step >= (before[i]["last_checkpoint_step"] or 0)
            assert [e["data"]["step"] for e in events if e["kind"] == "resumed"] == [step]
            resumed_any = True
        elif recovered and "already published" in recovered["message"]:
            # it published just before the old scheduler died: recovery ends it SUCCEEDED, not re-run
            assert recovered["state"] == "SUCCEEDED" and "started" not in kinds[kinds.index("recovered"):]
            assert kinds.count("started") == 1 and kinds.count("state") == 0
            continue
        elif recovered:
            assert "starts over" in recovered["message"] and "resumed" not in kinds
        # one terminal event; a recovered job started twice (killed with the old scheduler, then
        # once more), never concurrently: its RUNNING stretches do not overlap
        assert kinds.count("state") == 1
        assert kinds.count("started") == (2 if was_running else 1)
        ivs = _intervals(cluster, i)
        assert all(a[1] <= b[0] for a, b in zip(ivs, ivs[1:], strict=False))
    assert resumed_any  # the job that had a checkpoint went on from it, not from step 0
