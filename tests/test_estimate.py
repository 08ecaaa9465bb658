"""The duration estimator (lorafarm.estimate), alone and inside the real SchedulerCore (fake
launcher and clock, real store): it learns a shape's step time from what runs reported, uses the
FLOPs prior with no history, follows a running job's own step times, survives a restart, and
the ETAs it gives are ordered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

from lorafarm.estimate import Estimator, flops_prior_step_s, model_params, queue_etas, shape_of
from lorafarm.estimate.eta import EtaJob
from lorafarm.estimate.persist import estimates_uri, load_estimator, save_estimator
from lorafarm.events import RunOutcome, RunState, Step

TENANTS = "tenants:\n  default: {weight: 1}\n"
DONE = RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///adapter")


def _job(name: str, steps: int, tenant: str = "demo", **training) -> dict:
    s = spec(tenant, name)
    s["training"].update(max_steps=steps, warmup_steps=0, **training)
    return s


def _steps(core, job_id: str, times: list[float], total: int, start: int = 1) -> None:
    for i, t in enumerate(times, start):
        core.report(job_id, Step(step=i, total_steps=total, loss=1.0, lr=1e-4, tokens_per_s=100.0,
                                 step_time_s=t, tokens_seen=100 * i))


def _run_to_end(core, launcher, clock, job_id: str, times: list[float], total: int) -> None:
    _steps(core, job_id, times, total)
    clock.advance(sum(times))
    launcher.end(job_id, DONE)
    core.tick()
    assert core.status(job_id)["state"] == "SUCCEEDED"


@pytest.fixture
def env(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    core = make_core(tmp_path / "store", TENANTS, clock=clock, launcher=launcher, capacity=FakeCapacity(cpus=1))
    return tmp_path / "store", core, clock, launcher


def test_prior_is_used_with_no_history(env):
    _, core, _, _ = env
    job = core.submit(_job("first", 40))
    record = core.jobs[job["job_id"]]
    r, t = record.spec["resources"], record.spec["training"]
    prior = flops_prior_step_s(model_params("tiny-llama"), t["global_batch_size"], t["seq_len"], r["workers"],
                               r["gpus_per_worker"], r["cpus_per_worker"], t["packing"])
    assert core.estimates.queued_estimate(record) == pytest.approx(40 * prior)
    assert core.status(job["job_id"])["estimated_remaining_s"] == pytest.approx(40 * prior, rel=1e-3)
    # the prior scales with what the spec asks: a model of 8B parameters takes far longer per step
    assert flops_prior_step_s(8_000_000_000, 16, 256, 1, 1.0) > 10 * flops_prior_step_s(870_000, 16, 256, 1, 1.0)
    assert model_params("meta-llama/Llama-3.1-8B") == 8_000_000_000
    assert model_params("HuggingFaceTB/SmolLM-135M") == 135_000_000


def test_learns_step_time_of_a_shape_from_runs(env):
    _, core, clock, launcher = env
    a = core.submit(_job("a", 10))["job_id"]
    core.tick()
    assert core.status(a)["state"] == "RUNNING"
    _run_to_end(core, launcher, clock, a, [9.0] + [2.0] * 9, 10)  # the first step (warm-up) is left out
    b = core.submit(_job("b", 30))["job_id"]
    assert core.status(b)["estimated_remaining_s"] == pytest.approx(60.0)
    other = core.submit(_job("c", 30, seq_len=128))["job_id"]  # another shape: not this figure
    assert core.status(other)["estimated_remaining_s"] != pytest.approx(60.0)
    # estimate vs actual is on the record and in the metric
    est = core.status(a)["estimate"]
    assert est["actual_s"] == pytest.approx(27.0) and est["ratio"] == pytest.approx(est["estimate_s"] / 27.0, rel=1e-3)
    assert core.metrics.estimate_error.collect()[0].samples[-1].value > 0  # one observation: _sum/_count


def test_calibrated_prior_for_a_new_shape(env):
    _, core, clock, launcher = env
    a = core.submit(_job("a", 5))["job_id"]
    core.tick()
    prior_a = core.estimates.shape(core.jobs[a]).prior_s
    _run_to_end(core, launcher, clock, a, [3 * prior_a] * 5, 5)  # this machine runs 3x slower than the prior
    b = core.submit(_job("b", 10, seq_len=128))["job_id"]
    prior_b = core.estimates.shape(core.jobs[b]).prior_s
    assert core.estimates.queued_estimate(core.jobs[b]) == pytest.approx(10 * 3 * prior_b, rel=1e-6)


def test_remaining_time_follows_measured_step_times(env):
    _, core, _, _ = env
    a = core.submit(_job("a", 100))["job_id"]
    core.tick()
    _steps(core, a, [5.0] + [1.0] * 19, 100)
    fast = core.status(a)["estimated_remaining_s"]
    assert fast == pytest.approx(80 * 1.0, rel=0.2)
    _steps(core, a, [4.0] * 20, 100, start=21)  # it slowed down: the last steps count
    slow = core.status(a)["estimated_remaining_s"]
    assert slow == pytest.approx(60 * 4.0, rel=0.2)
    assert core.status(a)["eta_end"] == pytest.approx(core.clock.now() + slow, rel=1e-6)


def test_estimates_survive_a_restart(env, tmp_path):
    store, core, clock, launcher = env
    a = core.submit(_job("a", 10))["job_id"]
    core.tick()
    _run_to_end(core, launcher, clock, a, [1.0] + [3.0] * 9, 10)
    path = estimates_uri(str(store))
    saved = json.loads(Path(path).read_text())
    assert saved["version"] == 1 and [3.0] in saved["shapes"].values()
    again = make_core(store, TENANTS, clock=clock, launcher=FakeLauncher(), capacity=FakeCapacity(cpus=1))
    b = again.submit(_job("b", 20))["job_id"]
    assert again.status(b)["estimated_remaining_s"] == pytest.approx(60.0)
    # a damaged file costs what was learned, never the scheduler
    Path(path).write_text("{not json")
    assert load_estimator(str(store)).shapes == {}
    make_core(store, TENANTS, clock=clock, launcher=FakeLauncher(), capacity=FakeCapacity(cpus=1))


def test_recovery_learns_from_records_the_file_missed(env):
    store, core, clock, launcher = env
    a = core.submit(_job("a", 10))["job_id"]
    core.tick()
    _steps(core, a, [2.5] * 4, 10)  # the scheduler dies mid-run: nothing written to estimates.json
    core.records.save(core.jobs[a])
    again = make_core(store, TENANTS, clock=clock, launcher=FakeLauncher(), capacity=FakeCapacity(cpus=1))
    b = again.submit(_job("b", 4))["job_id"]
    assert again.status(b)["estimated_remaining_s"] == pytest.approx(10.0)


def test_etas_ordered_shortest_first_behind_a_blocker(env):
    _, core, clock, launcher = env
    blocker = core.submit(_job("blocker", 10))["job_id"]
    core.tick()
    _steps(core, blocker, [1.0] + [2.0] * 4, 10)  # 5 steps left at 2 s
    jobs = {n: core.submit(_job(n, steps))["job_id"] for n, steps in (("long", 40), ("short", 5), ("mid", 20))}
    now = clock.now()
    st = {n: core.status(j) for n, j in jobs.items()}
    assert core.status(blocker)["eta_end"] == pytest.approx(now + 10.0)
    assert st["short"]["eta_start"] == pytest.approx(now + 10.0)
    assert st["short"]["eta_start"] < st["mid"]["eta_start"] < st["long"]["eta_start"]
    for s in st.values():
        assert s["eta_end"] == pytest.approx(s["eta_start"] + s["estimated_remaining_s"])
    listed = {s["job_id"]: s for s in core.list()}
    assert listed[jobs["mid"]]["eta_start"] == st["mid"]["eta_start"]
    # the policy starts them in that order (one CPU: one at a time)
    launcher.end(blocker, DONE)
    order = []
    for name in ("short", "mid", "long"):
        core.tick()
        running = [n for n, j in jobs.items() if core.status(j)["state"] == "RUNNING"]
        assert running == [name]
        order.append(name)
        launcher.end(jobs[name], DONE)
    assert order == ["short", "mid", "long"]


def test_eta_unknown_behind_a_job_of_unknown_length():
    starts, ends = queue_etas(100.0, 2, 0, [EtaJob("r", 0, 2, None)], [EtaJob("q1", 0, 1, 5.0), EtaJob("q2", 0, 1, 5)])
    assert starts == {"q1": None, "q2": None} and ends["r"] is None
    starts, ends = queue_etas(0.0, 2, 0, [EtaJob("r", 0, 1, 10.0)], [EtaJob("a", 0, 1, 5.0), EtaJob("b", 0, 2, 1.0)])
    assert starts == {"a": 0.0, "b": 10.0} and ends == {"r": 10.0, "a": 5.0, "b": 11.0}


def test_shape_key_covers_what_decides_step_time():
    base = _job("x", 10)
    keys = {shape_of(base).key}
    for section, field, value in (("training", "micro_batch_size", 2), ("training", "seq_len", 1024),
                                  ("lora", "r", 32), ("lora", "target_modules", ["q_proj"]),
                                  ("training", "packing", True), ("resources", "workers", 2)):
        changed = json.loads(json.dumps(base))
        changed[section][field] = value
        keys.add(shape_of(changed).key)
    keys.add(shape_of({**base, "base_model": "other"}).key)
    keys.add(shape_of(base, accelerator="H100").key)  # CPU job: accelerator type does not apply
    assert len(keys) == 8
    gpu = json.loads(json.dumps(base))
    gpu["resources"]["gpus_per_worker"] = 1
    assert shape_of(gpu, "H100").key != shape_of(gpu, "A100").key


def test_estimator_json_round_trip(tmp_path):
    est = Estimator()
    for i in range(3):
        est.learn("k", 1.0 + i, f"j{i}")
    est.learn("k", 100.0, "j0")  # the same job twice: once only
    save_estimator(str(tmp_path), est)
    back = load_estimator(str(tmp_path))
    assert back.step_time("k").step_s == 2.0 and back.counts == {"k": 3}
    back.learn("k", 100.0, "j1")
    assert back.counts == {"k": 3}
