"""Estimates through the real scheduler (`lorafarm serve` on a real Ray head, real training
runs of tiny-llama): three queued jobs of different lengths behind a blocker start
shortest-estimated-first within their tenant and band, and `status --json` carries ordered
`eta_start`/`eta_end` while they wait (and `eta_end` for the running blocker, from its steps).

Jobs are cancelled as soon as their start is seen: what is tested is the order of admission,
not training, so the module takes about two minutes on an idle machine. A job cancelled while
its workers start must free them too (Ray Train's placement group, not yet reported: the cause
of this test's earlier failures)."""

from __future__ import annotations

import time

import pytest
from helpers import quickstart_spec, wait_for

pytestmark = pytest.mark.integration

TENANTS = "tenants:\n  default: {weight: 1}\n"


def _spec(head, name: str, steps: int) -> dict:
    return quickstart_spec("demo", name, head.tmp / "small.jsonl",
                           training={"max_steps": steps, "warmup_steps": 0, "eval_every_steps": 0, "seq_len": 64,
                                     "global_batch_size": 2, "micro_batch_size": 2, "checkpoint_every_steps": 100000},
                           resources={"workers": 1, "cpus_per_worker": 2})


@pytest.fixture(scope="module")
def head(serve_cluster):
    return serve_cluster(TENANTS, 3)  # 1 CPU kept for the scheduler: 2 for jobs, one job at a time


def test_shortest_estimate_starts_first_and_etas_are_ordered(head):
    blocker = head.submit_spec(_spec(head, "blocker", 100000))
    wait_for(lambda: (head.status(blocker).get("progress") or {}).get("step", 0) >= 3, 600,
             "the blocker to train a few steps")
    jobs = {name: head.submit_spec(_spec(head, name, steps)) for name, steps in (("long", 3000), ("short", 500),
                                                                              ("mid", 1500))}
    # one snapshot: the blocker's remaining time follows its latest step times, so figures from two
    # calls a moment apart differ by the noise of 100,000 steps' worth of estimate
    now = time.time()
    listed = {j["job_id"]: j for j in head.lorafarm_json("list")}
    st = {name: listed[j] for name, j in jobs.items()}
    b = listed[blocker]
    assert b["state"] == "RUNNING" and b["eta_start"] is None
    assert b["eta_end"] is not None and b["eta_end"] > now  # remaining steps × its own step times
    assert b["estimated_remaining_s"] == pytest.approx(b["eta_end"] - now, rel=0.5, abs=30)
    for s in st.values():
        assert s["state"] == "QUEUED"
        assert s["eta_start"] is not None and s["eta_end"] > s["eta_start"] >= b["eta_end"] - 5
    assert st["short"]["eta_start"] < st["mid"]["eta_start"] < st["long"]["eta_start"]
    assert st["short"]["estimated_remaining_s"] < st["mid"]["estimated_remaining_s"] \
        < st["long"]["estimated_remaining_s"]
    text = head.lorafarm("status", jobs["mid"], check=True).stdout
    assert "eta:" in text and "starts ~" in text and "ends ~" in text
    listed = head.lorafarm("list", check=True).stdout
    assert "start " in listed and "end " in listed

    # admission order: each start is seen (a job counts as started once it has a start time, even if
    # it already ended), then the job is cancelled so the next one is admitted
    head.lorafarm("cancel", blocker, check=True)
    started: list[str] = []
    for _ in range(3):
        def next_started():
            now_listed = {j["job_id"]: j for j in head.lorafarm_json("list")}
            views = {n: now_listed[j] for n, j in jobs.items()}
            failed = {n: (v["state"], v["reason"]) for n, v in views.items()
                      if v["state"] in ("FAILED", "SUCCEEDED") or (v["state"] == "CANCELLED" and n not in started)}
            assert not failed, f"a job ended without being cancelled by the test: {failed}"
            return [n for n, v in views.items() if n not in started and v["started_at"] is not None], views

        running = wait_for(lambda: next_started()[0], 300, "the next job to start",
                           describe=lambda: ({n: (v["state"], v["reason"], v["attempts"])
                                              for n, v in next_started()[1].items()}, head.scheduler_lines()))
        assert len(running) == 1, running
        started.append(running[0])
        head.lorafarm("cancel", jobs[running[0]], check=True)
    assert started == ["short", "mid", "long"]  # submitted long, short, mid


# cancels the job from inside the cluster the moment its workers' placement group exists: Ray
# Train hands the group to its own cleaner only once the workers have started, so this is the
# moment a stopped run used to leave the group holding the gang's CPUs for good
CANCEL_WHEN_GROUP_EXISTS = """
import time, ray
from ray.util import placement_group_table
from lorafarm.scheduler.names import NAMESPACE, SCHEDULER_NAME
ray.init(namespace=NAMESPACE, logging_level="ERROR")
scheduler = ray.get_actor(SCHEDULER_NAME)
deadline = time.time() + 240
while time.time() < deadline:
    if any(pg["state"] == "CREATED" for pg in placement_group_table().values()):
        ray.get(scheduler.cancel.remote({job_id!r}))
        print("cancelled while its workers started")
        break
    time.sleep(0.02)
"""


def test_a_job_cancelled_while_its_workers_start_frees_them_for_the_next(head):
    first = head.submit_spec(_spec(head, "startup-cancelled", 100000))
    watch = head.python(CANCEL_WHEN_GROUP_EXISTS.format(job_id=first), timeout=300)
    assert "cancelled while its workers started" in watch.stdout, watch.stderr[-3000:]
    assert head.status(first)["state"] == "CANCELLED"
    second = head.submit_spec(_spec(head, "after-it", 100000))
    wait_for(lambda: head.status(second).get("started_at") is not None, 180, "the next job to start",
             describe=lambda: (head.ray("status", "--address", head.address).stdout[-1500:],
                               head.scheduler_lines()))
    head.lorafarm("cancel", second, check=True)
