"""SchedulerCore with no Ray: a fake clock, a fake launcher and a fixed cluster over a temp store.
Admission order, every state transition, terminal states, recovery, chargeback and what each
typed event does."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

from lorafarm.errors import SpecError
from lorafarm.events import (
    CheckpointSaved,
    DataReady,
    GroupStarted,
    Phase,
    Preempted,
    Resumed,
    RunOutcome,
    RunState,
    Step,
    WorkerError,
)
from lorafarm.scheduler.state import IllegalTransition, JobState
from lorafarm.storage import publish_dir

TENANTS = textwrap.dedent("""
    priority_classes: {low: 0, normal: 100, high: 1000}
    policy: {aging_per_hour: 0}
    tenants:
      default: {weight: 1}
      demo: {weight: 1}
      heavy: {weight: 1}
      light: {weight: 3}
""")


@pytest.fixture
def env(tmp_path):
    clock, launcher, capacity = FakeClock(), FakeLauncher(), FakeCapacity(cpus=2)
    core = make_core(tmp_path / "store", TENANTS, clock, launcher, capacity)
    return core, clock, launcher, capacity


def _submit(core, clock, **kw) -> str:
    job_id = core.submit(spec(**kw))["job_id"]
    clock.advance(1.0)  # distinct submission times
    return job_id


def _kinds(core, job_id):
    return [e["kind"] for e in core.events(job_id)]


def _sample(core, name, **labels):
    return core.metrics.registry.get_sample_value(name, labels) or 0.0


def _step(n: int, **extra) -> Step:
    return Step(step=n, total_steps=10, loss=2.0 - 0.1 * n, lr=1e-3, tokens_per_s=1000.0, step_time_s=0.2,
                tokens_seen=512 * n, **extra)


# -- submit ------------------------------------------------------------------------------------


def test_submit_queues_saves_the_record_and_the_spec(env):
    core, clock, launcher, _ = env
    summary = core.submit(spec(name="one"))
    assert summary["state"] == "QUEUED" and summary["tenant"] == "demo" and summary["submitted_at"] == clock.now()
    assert summary["job_id"].startswith("one")
    root = core.store.root
    record = json.loads(Path(f"{root}/_jobs/{summary['job_id']}.json").read_text())
    assert record["state"] == "QUEUED"
    assert "tenant: demo" in Path(f"{root}/demo/{summary['job_id']}/spec.yaml").read_text()
    assert _kinds(core, summary["job_id"]) == ["submitted"]
    assert launcher.started == []  # nothing starts before a tick


@pytest.mark.parametrize("tenants, kw, expected", [
    ("unknown_tenants: reject\ntenants: {demo: {}}\n", {"tenant": "stranger"}, "unknown tenants are rejected"),
    ("tenants: {default: {}, demo: {priorities: [low], default_priority: low}}\n", {"priority": "high"}, "priority: 'high' is not allowed"),
    ("tenants: {default: {}, demo: {quota: {cpus: 1}}}\n", {"workers": 2}, "tenants.demo.quota.cpus"),
    ("tenants: {default: {}}\n", {"workers": 4}, "the whole cluster has 2"),
    ("tenants: {default: {}}\n", {"trust_remote_code": True}, "trust_remote_code: not allowed"),
])
def test_submit_refuses_with_every_reason_and_queues_nothing(tmp_path, tenants, kw, expected):
    core = make_core(tmp_path / "store", tenants, capacity=FakeCapacity(cpus=2))
    with pytest.raises(SpecError) as e:
        core.submit(spec(**kw))
    assert expected in str(e.value)
    assert core.list() == []


def test_submit_refuses_another_tenants_data_and_the_max_queued(tmp_path):
    core = make_core(tmp_path / "store", "tenants: {default: {quota: {max_queued: 1}}}\n")
    other = spec()
    other["dataset"]["uri"] = f"{core.store.root}/someone/data.jsonl"
    with pytest.raises(SpecError, match="under another tenant's store prefix"):
        core.submit(other)
    core.submit(spec())
    with pytest.raises(SpecError, match=r"already has 1 queued jobs \(quota max_queued 1\)"):
        core.submit(spec())


# -- admission order ---------------------------------------------------------------------------


def _drain(core, clock, launcher) -> list[str]:
    """Tick until nothing is queued, succeeding each started job at the next tick; start order."""
    order: list[str] = []
    for _ in range(50):
        core.tick()
        for job_id in launcher.started[len(order):]:
            order.append(job_id)
            launcher.end(job_id, RunOutcome(RunState.SUCCEEDED, adapter_uri=f"mem://{job_id}"))
        clock.advance(1.0)
        if not core.list(state="QUEUED") and not core.list(state="RUNNING"):
            return order
    raise AssertionError("jobs never drained")


def test_admission_priority_first_then_fifo_within_a_tenant(env):
    core, clock, launcher, capacity = env
    capacity.cpus = 1  # one job at a time
    first = _submit(core, clock, name="first")
    second = _submit(core, clock, name="second")
    urgent = _submit(core, clock, name="urgent", priority="high")
    assert _drain(core, clock, launcher) == [urgent, first, second]


def test_admission_weighted_fair_share_between_tenants(env):
    core, clock, launcher, capacity = env
    capacity.cpus = 4
    heavy = [_submit(core, clock, tenant="heavy", name=f"h{i}") for i in range(4)]
    light = [_submit(core, clock, tenant="light", name=f"l{i}") for i in range(4)]
    core.tick()
    # weight 3 vs 1: of 4 CPUs, light gets 3 and heavy 1, whoever submitted first
    assert sorted(launcher.started) == sorted(heavy[:1] + light[:3])


# -- transitions -------------------------------------------------------------------------------


def test_start_then_succeed(env):
    core, clock, launcher, _ = env
    job = _submit(core, clock)
    core.tick()
    assert core.status(job)["state"] == "RUNNING" and core.status(job)["attempts"] == 1
    assert launcher.specs[job].tenant == "demo"  # a validated JobSpec, not a dict
    clock.advance(30)
    manifest = {"files": {"adapter_model.safetensors": {"size": 1000, "sha256": "x"}}}
    launcher.end(job, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///a", metrics={"loss": 1.5}, manifest=manifest))
    core.tick()
    s = core.status(job)
    assert s["state"] == "SUCCEEDED" and s["adapter_uri"] == "file:///a" and s["metrics"] == {"loss": 1.5}
    assert s["ended_at"] - s["started_at"] == 30
    assert _sample(core, "lorafarm_adapter_bytes_total", tenant="demo") == 1000
    assert _sample(core, "lorafarm_jobs_finished_total", tenant="demo", outcome="succeeded") == 1
    assert [e["state"] for e in core.events(job)] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert "succeeded" in core.logs_since(job)[0][-1]
    assert "started: 1 worker(s)" in Path(f"{core.store.root}/demo/{job}/log.txt").read_text()


@pytest.mark.parametrize("reason", ["JobFailed: dataset has no rows", "runner died: RayActorError: killed"])
def test_failed_with_the_reason(env, reason):
    core, clock, launcher, _ = env
    job = _submit(core, clock)
    core.tick()
    launcher.end(job, RunOutcome.failed(reason))
    core.tick()
    s = core.status(job)
    assert s["state"] == "FAILED" and s["reason"] == reason
    assert _sample(core, "lorafarm_worker_failures_total", tenant="demo") == 1


def test_hang_timeout_fails_and_stops_the_run(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    core = make_core(tmp_path / "store", TENANTS, clock, launcher, hang_timeout_s=60)
    job = _submit(core, clock)
    core.tick()
    clock.advance(50)
    core.report(job, Phase("training"))  # progress resets the timer
    clock.advance(50)
    core.tick()
    assert core.status(job)["state"] == "RUNNING"
    clock.advance(11)
    core.tick()
    s = core.status(job)
    assert s["state"] == "FAILED" and "no progress for 60 s" in s["reason"] and launcher.killed == [job]


def test_cancel_queued_and_running(env):
    core, clock, launcher, capacity = env
    capacity.cpus = 1
    running = _submit(core, clock, name="running")
    queued = _submit(core, clock, name="queued")
    core.tick()
    core.report(running, GroupStarted(world_size=1, placement_group="ab12"))
    s = core.cancel(queued)
    assert s["state"] == "CANCELLED" and s["reason"] == "cancelled" and launcher.killed == [queued]
    assert core.events(queued)[-1]["message"] == "cancelled by request"
    s = core.cancel(running)
    assert s["state"] == "CANCELLED" and launcher.killed[-1] == running and launcher.released == ["ab12"]
    assert core.events(running)[-1]["message"] == "cancelled by request; workers stopped"
    assert _kinds(core, running)[-2:] == ["cancel_requested", "state"]


def test_preempt_requeues_with_the_checkpoint_step(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    tenants = TENANTS.replace("aging_per_hour: 0}", "aging_per_hour: 0, preemption: true}")
    core = make_core(tmp_path / "store", tenants, clock, launcher, FakeCapacity(cpus=1))
    low = _submit(core, clock, name="low", priority="low")
    core.tick()
    high = _submit(core, clock, name="high", priority="high")
    core.tick()
    core.tick()  # one preemption at a time: not asked twice
    assert launcher.preempted == [low] and _kinds(core, low)[-1] == "preempting"
    core.report(low, Preempted(step=7))
    launcher.end(low, RunOutcome(RunState.PREEMPTED, step=7))
    core.tick()
    s = core.status(low)
    assert s["state"] == "QUEUED" and s["last_checkpoint_step"] == 7 and s["progress"] == {}
    assert _kinds(core, low)[-1] == "preempted"
    assert core.status(high)["state"] == "RUNNING"
    assert _sample(core, "lorafarm_preemptions_total", tenant="demo") == 1


def test_terminal_states_never_change(env):
    core, clock, launcher, _ = env
    job = _submit(core, clock)
    core.tick()
    launcher.end(job, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///a"))
    core.tick()
    assert core.cancel(job)["state"] == "SUCCEEDED"
    gone = _submit(core, clock)
    core.tick()
    core.cancel(gone)
    launcher.end(gone, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///late"))  # the run ends anyway
    core.report(gone, _step(3))
    core.tick()
    s = core.status(gone)
    assert s["state"] == "CANCELLED" and s["adapter_uri"] is None and s["progress"] == {}
    record = core.jobs[gone]
    with pytest.raises(IllegalTransition):
        record.transition(JobState.RUNNING, clock.now())


# -- recovery ----------------------------------------------------------------------------------


def test_recovery_requeues_running_marks_published_and_kills_leftovers(tmp_path):
    store = tmp_path / "store"
    clock, launcher = FakeClock(), FakeLauncher()
    core = make_core(store, TENANTS, clock, launcher, FakeCapacity(cpus=4))
    published, fresh, checkpointed = (_submit(core, clock, name=n) for n in ("published", "fresh", "ckpt"))
    done = _submit(core, clock, name="done")
    core.tick()
    launcher.end(done, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///done"))
    core.tick()
    core.report(fresh, GroupStarted(world_size=1, placement_group="pg1"))
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"weights")
    publish_dir(adapter_dir, core.store.adapter_uri("demo", published), {"job_id": published})
    from lorafarm.storage import join, write_bytes
    from lorafarm.worker.checkpoints import rng_file, step_uri, write_marker

    ckpt = step_uri(core.store.job_uri("demo", checkpointed), 5)
    write_bytes(join(ckpt, rng_file(0)), b"rng")
    write_marker(ckpt, step=5, world=1, files={}, resume_digest=None, save_seconds=0.1)

    # the old scheduler dies; a new one over the same store
    launcher2 = FakeLauncher()
    core2 = make_core(store, TENANTS, clock, launcher2, FakeCapacity(cpus=4))
    assert sorted(launcher2.leftovers_killed) == sorted([published, fresh, checkpointed])
    assert launcher2.released == ["pg1"]
    assert core2.status(published)["state"] == "SUCCEEDED"
    assert core2.status(published)["adapter_uri"] == core.store.adapter_uri("demo", published)
    assert core2.status(done)["state"] == "SUCCEEDED" and core2.status(done)["adapter_uri"] == "file:///done"
    assert core2.status(fresh)["state"] == "QUEUED"
    assert core2.events(fresh)[-1]["message"].endswith("starts over (no checkpoint)")
    assert core2.events(checkpointed)[-1]["message"].endswith("resumes from checkpoint step 5")
    assert all(_kinds(core2, j)[-1] == "recovered" for j in (published, fresh, checkpointed))
    core2.tick()
    assert sorted(launcher2.started) == sorted([fresh, checkpointed])
    assert core2.status(fresh)["attempts"] == 2


# -- usage and chargeback ----------------------------------------------------------------------


def test_chargeback_seconds_from_the_clock_and_tenants_usage(env):
    core, clock, launcher, capacity = env
    capacity.cpus, capacity.gpus = 4, 0
    job = _submit(core, clock, workers=2, cpus=1.5)
    _submit(core, clock, tenant="light", workers=2, cpus=1.0)  # 2 CPUs: waits behind 3 held of 4
    core.tick()
    before = _sample(core, "lorafarm_cpu_seconds_total", tenant="demo")
    clock.advance(10)
    core.tick()
    assert _sample(core, "lorafarm_cpu_seconds_total", tenant="demo") - before == pytest.approx(30.0)
    assert _sample(core, "lorafarm_tenant_usage", tenant="demo", resource="cpus") == 3.0
    assert _sample(core, "lorafarm_jobs", tenant="light", state="QUEUED") == 1
    assert _sample(core, "lorafarm_queue_oldest_seconds", tenant="light") == pytest.approx(11.0)
    rows = {r["tenant"]: r for r in core.tenants_usage()}
    assert rows["demo"]["usage"] == {"workers": 2, "cpus": 3.0, "gpus": 0.0} and rows["demo"]["running"] == 1
    assert rows["light"]["queued"] == 1 and rows["light"]["usage"] == {"workers": 0, "cpus": 0, "gpus": 0}
    assert rows["light"]["weight"] == 3
    launcher.end(job, RunOutcome.failed("x"))
    clock.advance(10)
    core.tick()  # it ended at the start of this tick: no more seconds charged to it
    assert _sample(core, "lorafarm_cpu_seconds_total", tenant="demo") - before == pytest.approx(30.0)


# -- typed events ------------------------------------------------------------------------------


def test_typed_events_update_progress_logs_and_metrics(env):
    core, clock, launcher, _ = env
    job = _submit(core, clock)
    core.tick()
    core.report(job, Phase("preparing data"))
    core.report(job, DataReady(stats={"examples": 3}, cache_hit=True))
    core.report(job, GroupStarted(world_size=1, placement_group="pg-a"))
    core.report(job, _step(1, eval_loss=2.5, gpu_memory_bytes=2_000_000_000, mfu=0.3))
    core.report(job, _step(2))
    core.report(job, CheckpointSaved(step=2, bytes=4096, seconds=0.5))
    core.report(job, WorkerError("worker 1 died", retryable=True))
    core.report(job, GroupStarted(world_size=1, placement_group="pg-b"))
    core.report(job, Resumed(step=2, world_size=1))
    s = core.status(job)
    assert s["progress"]["step"] == 2 and s["progress"]["tokens_seen"] == 1024 and "eval_loss" not in s["progress"]
    assert s["last_checkpoint_step"] == 2
    lines = " | ".join(core.logs_since(job)[0])
    for text in ("preparing data", "data: 3 examples (cache hit)", "step 1/10 loss 1.9000 1000 tok/s eval 2.5000",
                 "checkpoint at step 2 (4096 bytes, 0.50 s)", "worker error: worker 1 died — Ray Train restarts",
                 "resumed from checkpoint step 2"):
        assert text in lines
    assert _kinds(core, job)[-3:] == ["failure", "failure", "resumed"]
    assert "worker group restarted after a failure (start 2 of this run, 1 workers)" in core.events(job)[-2]["message"]
    assert _sample(core, "lorafarm_train_tokens_total", tenant="demo") == 1024  # deltas of tokens_seen
    assert _sample(core, "lorafarm_worker_failures_total", tenant="demo") == 1
    assert _sample(core, "lorafarm_checkpoint_bytes_total", tenant="demo") == 4096
    assert _sample(core, "lorafarm_train_loss", tenant="demo", job_id=job) == pytest.approx(1.8)
    saved = json.loads(Path(f"{core.store.root}/_jobs/{job}.json").read_text())
    assert saved["placement_groups"] == ["pg-a", "pg-b"]  # a new scheduler finds them
    lines, total, done = core.logs_since(job, 3)
    assert total == len(core.logs_since(job)[0]) and len(lines) == total - 3 and not done


# -- the queue index ---------------------------------------------------------------------------


def test_new_estimates_reach_a_short_queue_at_once_and_a_long_one_every_refresh_interval(env, monkeypatch):
    import lorafarm.scheduler.core as core_module

    core, clock, launcher, _ = env
    jobs = [_submit(core, clock, name=f"j{i}") for i in range(4)]
    core.tick()  # two start (2 CPUs), two wait
    waiting = [j for j in jobs if core.jobs[j].state is JobState.QUEUED]
    assert len(waiting) == 2
    key = core.estimates.shape(core.jobs[waiting[0]]).key
    before = core.index.queue.get(waiting[0]).estimated_duration

    core.estimates.estimator.learn(key, 50.0)  # a finished job of that shape was slow
    core.tick()
    after = core.index.queue.get(waiting[0]).estimated_duration
    assert after != before and after == core.estimates.queued_estimate(core.jobs[waiting[0]])  # short queue: now

    monkeypatch.setattr(core_module, "REFRESH_EVERY_TICK", 1)  # the queue counts as long from here on
    core.estimates.estimator.learn(key, 500.0)
    core.tick()
    assert core.index.queue.get(waiting[0]).estimated_duration == after  # not yet
    clock.advance(core_module.ESTIMATE_REFRESH_S)
    core.tick()
    assert core.index.queue.get(waiting[0]).estimated_duration == core.estimates.queued_estimate(core.jobs[waiting[0]])
    assert core.index.queue.get(waiting[0]).estimated_duration > after


def test_a_job_the_index_lost_is_found_by_the_next_reconcile(env, capsys):
    import lorafarm.scheduler.core as core_module

    core, clock, launcher, _ = env
    job = _submit(core, clock, name="lost")
    core.index.queue.remove(job)  # as if a state change had bypassed the index
    core.index.counts.clear()
    SchedulerCore = type(core).__mro__[1]  # the real tick, without the fake's per-tick check
    SchedulerCore.tick(core)
    assert launcher.started == []  # not before the reconcile interval
    clock.advance(core_module.RECONCILE_S)
    core.tick()
    assert launcher.started == [job] and core.jobs[job].state is JobState.RUNNING
    assert "job index rebuilt" in capsys.readouterr().out
