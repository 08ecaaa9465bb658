"""``lorafarm simulate``: hand-computed tiny traces, invariants on generated ones, determinism,
trace readers, the CLI, and the simulator and the live scheduler deciding alike."""

from __future__ import annotations

import json
import statistics

import pytest

from lorafarm.policy import ClusterState, JobRequest, decide
from lorafarm.sim import (
    ClusterSpec,
    SimJob,
    Simulator,
    TraceError,
    dumps,
    fair_split,
    generate,
    jain,
    percentile,
    read_trace,
    simulate,
    summarize,
    tenants_yaml,
    write_trace,
)
from lorafarm.tenants import load_tenants

PLAIN = load_tenants("tenants: {default: {weight: 1}}")


def sj(job_id, at, gpus, duration, tenant="x", workers=1, cpus=1.0, priority=None):
    return SimJob(job_id, tenant, at, workers, gpus, duration, priority, cpus)


def jcts(result):
    return {k: o.end - o.job.submit_time for k, o in result.outcomes.items()}


def starts(result):
    return [k for k, _ in sorted(((k, o.start) for k, o in result.outcomes.items()), key=lambda kv: (kv[1], kv[0]))]


# -- tiny traces, computed by hand ------------------------------------------------------------

ORDER = [sj("A", 0, 4, 100), sj("B", 1, 4, 50), sj("C", 2, 4, 10)]  # one tenant, 4 GPUs: one job at a time


def test_fifo_serves_in_submission_order():
    r = simulate(ORDER, ClusterSpec(4), PLAIN, "fifo")
    assert jcts(r) == {"A": 100, "B": 149, "C": 158}  # A 0-100, B 100-150, C 150-160


def test_sjf_serves_shortest_first():
    r = simulate(ORDER, ClusterSpec(4), PLAIN, "sjf")
    assert jcts(r) == {"A": 100, "C": 108, "B": 159}  # A 0-100, C 100-110, B 110-160


def test_lorafarm_orders_a_tenants_jobs_by_estimate_and_otherwise_by_submission():
    assert jcts(simulate(ORDER, ClusterSpec(4), PLAIN, "lorafarm")) == {"A": 100, "C": 108, "B": 159}
    no_estimates = Simulator(ORDER, ClusterSpec(4), PLAIN, decide, "lorafarm", estimates=False).run()
    assert jcts(no_estimates) == {"A": 100, "B": 149, "C": 158}


SHARE = [sj(f"a{i}", 0, 1, 100, tenant="a") for i in range(1, 5)] + [sj("b1", 1, 1, 100, tenant="b")]


def test_fifo_makes_the_small_tenant_wait_behind_the_burst():
    r = simulate(SHARE, ClusterSpec(2), PLAIN, "fifo")
    assert jcts(r) == {"a1": 100, "a2": 100, "a3": 200, "a4": 200, "b1": 299}


def test_lorafarm_interleaves_tenants_by_fair_share():
    r = simulate(SHARE, ClusterSpec(2), PLAIN, "lorafarm")
    # at 100 both hold nothing: a3 (older) first, then b1 (share 0 < a's 0.5); a4 at 200
    assert jcts(r) == {"a1": 100, "a2": 100, "a3": 200, "b1": 199, "a4": 300}
    assert starts(r) == ["a1", "a2", "a3", "b1", "a4"]


BACKFILL = [sj("A", 0, 2, 100), sj("B", 1, 4, 10), sj("C", 2, 0, 10, cpus=2)]  # C needs no GPU


def test_fifo_blocks_everything_behind_the_head():
    r = simulate(BACKFILL, ClusterSpec(4, cpus=32), PLAIN, "fifo")
    assert jcts(r) == {"A": 100, "B": 109, "C": 108}  # C waits for B to start at 100


def test_lorafarm_backfills_without_delaying_the_head():
    r = simulate(BACKFILL, ClusterSpec(4, cpus=32), PLAIN, "lorafarm")
    assert jcts(r) == {"A": 100, "B": 109, "C": 10}  # C runs 2-12 on CPUs B can't use; B still at 100


def test_gangs_wait_for_a_node_with_room_for_each_worker():
    jobs = [sj("A", 0, 2, 100), sj("B", 0, 2, 50), sj("G", 1, 3, 10)]  # 2 nodes of 4 GPUs
    r = simulate(jobs, ClusterSpec(8, nodes=2), PLAIN, "lorafarm")
    # A and B fill 2 GPUs on each node (best fit packs them on one node: 4 + 0); G fits at 1
    assert r.outcomes["G"].start == 1
    jobs = [sj("A", 0, 3, 100), sj("B", 0, 3, 50), sj("G", 1, 2, 10, workers=2)]  # 1 free per node until 50
    r = simulate(jobs, ClusterSpec(8, nodes=2), PLAIN, "lorafarm")
    assert r.outcomes["G"].start == 50 and jcts(r)["G"] == 59


def test_preemption_stops_a_lower_class_job_which_resumes_later():
    tenants = load_tenants("policy: {preemption: true}\ntenants: {default: {weight: 1}}")
    jobs = [sj("L", 0, 4, 100, priority="low"), sj("H", 10, 4, 20, priority="high")]
    r = simulate(jobs, ClusterSpec(4), tenants, "lorafarm")
    assert jcts(r) == {"H": 20, "L": 120}  # L 0-10, H 10-30, L resumes with 90 s left: 30-120
    assert r.preemptions == 1 and r.outcomes["L"].preempted == 1
    assert jcts(simulate(jobs, ClusterSpec(4), tenants, "fifo")) == {"L": 100, "H": 110}


def test_submission_refuses_what_the_scheduler_refuses():
    tenants = load_tenants("unknown_tenants: reject\ntenants:\n  x: {quota: {gpus: 4, max_queued: 1}, "
                           "priorities: [normal]}\n")
    jobs = [sj("ok", 0, 4, 10), sj("too-big", 0, 8, 10), sj("stranger", 0, 1, 10, tenant="y"),
            sj("vip", 0, 1, 10, priority="high"), sj("q1", 1, 4, 10), sj("q2", 1, 4, 10)]
    r = simulate(jobs, ClusterSpec(16), tenants, "lorafarm")
    rejected = {k: o.rejected for k, o in r.outcomes.items() if o.rejected}
    assert set(rejected) == {"too-big", "stranger", "vip", "q2"}
    assert "tenants.x.quota.gpus" in rejected["too-big"] and "max_queued" in rejected["q2"]
    s = summarize(r)
    assert s["rejected"] == 4 and s["finished"] == 2 and s["unfinished"] == 0


# -- invariants on generated traces -----------------------------------------------------------

GEN_TENANTS = load_tenants(tenants_yaml(tenants=6, gpus=64, quota_fraction=0.5, heavy_weight=2))


@pytest.fixture(scope="module")
def generated():
    return generate(500, seed=7, gpus=64, tenants=6, load=1.0, max_gang=16)


@pytest.mark.parametrize("policy", ["lorafarm", "fifo", "sjf"])
def test_generated_trace_invariants(generated, policy):
    r = simulate(generated, ClusterSpec(64, nodes=8), GEN_TENANTS, policy)
    s = summarize(r)
    assert s["finished"] == s["jobs"] == 500 and s["rejected"] == 0
    assert r.quota_violations == 0 and r.capacity_violations == 0 and r.event_times_monotone
    for o in r.outcomes.values():
        assert o.job.submit_time <= o.start <= o.end
        assert o.end - o.start == pytest.approx(o.job.duration)  # no preemption: runs once, whole
    # replay the usage timeline: no tenant above its quota, the cluster never over-committed
    held: dict[str, float] = {}
    last = -1.0
    for t, tenant, delta in r.tenant_series:
        assert t >= last
        last = t
        held[tenant] = held.get(tenant, 0.0) + delta
        assert held[tenant] <= GEN_TENANTS.quota(tenant).gpus + 1e-9
        assert sum(held.values()) <= 64 + 1e-9
    assert all(abs(v) < 1e-9 for v in held.values())
    assert 0 < s["gpu_util"] <= 1 and 0 < s["gpu_util_while_runnable"] <= 1 and 0 < s["jain"] <= 1
    times = [p[0] for p in r.series]
    assert times == sorted(times)


def test_same_seed_gives_byte_identical_summaries(generated):
    again = generate(500, seed=7, gpus=64, tenants=6, load=1.0, max_gang=16)
    assert again == generated
    one = dumps([summarize(simulate(generated, ClusterSpec(64, nodes=8), GEN_TENANTS, p)) for p in ("lorafarm", "fifo")])
    two = dumps([summarize(simulate(again, ClusterSpec(64, nodes=8), GEN_TENANTS, p)) for p in ("lorafarm", "fifo")])
    assert one == two
    other = generate(500, seed=8, gpus=64, tenants=6, load=1.0, max_gang=16)
    assert dumps([summarize(simulate(other, ClusterSpec(64, nodes=8), GEN_TENANTS, "lorafarm"))]) != one


@pytest.mark.parametrize("estimates", ["estimator", False])
def test_the_queue_index_replays_exactly_as_decide_over_the_whole_queue(generated, estimates):
    """lorafarm's policy in the simulator keeps its queue in a QueueIndex; a wrapper of decide
    (not decide itself) takes the O(n)-per-call path: every start, end and figure is the same."""
    tenants = load_tenants(tenants_yaml(6, 64))
    indexed = Simulator(generated, ClusterSpec(64, nodes=8), tenants, decide, estimates=estimates)
    plain = Simulator(generated, ClusterSpec(64, nodes=8), tenants, lambda *a: decide(*a), estimates=estimates)
    assert indexed.index is not None and plain.index is None
    a, b = indexed.run(), plain.run()
    assert {k: (o.start, o.end) for k, o in a.outcomes.items()} == {k: (o.start, o.end) for k, o in b.outcomes.items()}
    assert dumps([summarize(a)]) == dumps([summarize(b)]) and a.decide_calls == b.decide_calls


def test_generator_shapes():
    jobs = generate(3000, seed=1, gpus=1000, tenants=50)
    assert len({j.job_id for j in jobs}) == 3000
    assert {j.gpus for j in jobs} <= {1, 2, 4, 8, 16, 32, 64} and max(j.gpus for j in jobs) == 64
    assert all(j.workers == 1 or j.gpus_per_worker == 8 for j in jobs)
    durations = sorted(j.duration for j in jobs)
    assert durations[len(durations) // 2] < 3600 and durations[-1] > 24 * 3600  # heavy tail
    per_tenant: dict[str, int] = {}
    for j in jobs:
        per_tenant[j.tenant] = per_tenant.get(j.tenant, 0) + 1
    assert per_tenant["t00"] > 5 * per_tenant.get("t40", 1)  # skewed
    times = [j.submit_time for j in jobs]
    assert times[0] == 0 and times == sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert sum(g <= 5.0 for g in gaps) > len(gaps) / 2  # bursts: most arrivals come seconds apart


def test_metric_helpers():
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([], 95) == 0
    assert jain([1, 1, 1]) == 1 and jain([1, 0]) == 0.5
    # 10 GPUs: x (weight 2) asks 8, y asks 1, z asks 8 -> y gets 1, x 6, z 3
    split = fair_split(10, {"x": 8, "y": 1, "z": 8}, {"x": 2, "y": 1, "z": 1})
    assert split == pytest.approx({"x": 6, "y": 1, "z": 3})


# -- trace files ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_lorafarm_trace_round_trip(tmp_path, suffix):
    jobs = [sj("a", 10, 2, 60, priority="high"), sj("b", 12, 0.5, 30, tenant="y", workers=4, cpus=2)]
    path = tmp_path / f"trace{suffix}"
    write_trace(jobs, path)
    back = read_trace(path)
    assert [j.job_id for j in back] == ["a", "b"] and back[0].submit_time == 0 and back[1].submit_time == 2
    assert back[0].priority == "high" and back[1].priority is None
    assert back[1].workers == 4 and back[1].gpus_per_worker == 0.5 and back[1].cpus_per_worker == 2


def test_trace_errors_name_the_row_and_the_fix(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("submit_time,tenant,job_id,gpus_per_worker,workers,duration\n0,x,a,1,1,10\n5,x,b,1,two,10\n")
    with pytest.raises(TraceError, match=r"row 3: workers 'two' is not a number — write a number"):
        read_trace(path)
    path.write_text("submit_time,tenant,job_id,workers,duration\n0,x,a,1,10\n")
    with pytest.raises(TraceError, match=r"missing column\(s\) gpus_per_worker — the lorafarm trace format needs"):
        read_trace(path)
    path.write_text("when,who\n1,2\n")
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        read_trace(path)
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.csv")


def test_helios_layout(tmp_path):
    path = tmp_path / "cluster_log.csv"
    path.write_text(
        "job_id,user,vc,jobname,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
        "1,u1,vcA,x,16,32,2,COMPLETED,2020-04-01 00:00:10,2020-04-01 00:01:00,2020-04-01 01:00:00,3540,50\n"
        "2,u2,vcB,y,0,4,1,COMPLETED,2020-04-01 00:00:20,2020-04-01 00:00:20,2020-04-01 00:10:00,580,0\n"
        "3,u2,vcB,z,1,6,1,FAILED,2020-04-01 00:00:30,2020-04-01 00:00:40,2020-04-01 00:05:00,260,10\n")
    jobs = read_trace(path)
    assert [(j.job_id, j.tenant, j.workers, j.gpus_per_worker, j.cpus_per_worker, j.submit_time, j.duration)
            for j in jobs] == [("1", "vca", 2, 8.0, 16.0, 0.0, 3540.0), ("3", "vcb", 1, 1.0, 6.0, 20.0, 260.0)]


def test_philly_layout(tmp_path):
    path = tmp_path / "cluster_job_log"
    path.write_text(json.dumps([
        {"status": "Pass", "vc": "6214e9", "jobid": "application_1", "user": "u1",
         "submitted_time": "2017-10-03 02:43:50",
         "attempts": [{"start_time": "2017-10-03 02:44:00", "end_time": "2017-10-03 03:44:00",
                       "detail": [{"ip": "m1", "gpus": ["gpu0", "gpu1"]}, {"ip": "m2", "gpus": ["gpu0", "gpu1"]}]}]},
        {"status": "Killed", "vc": "6214e9", "jobid": "application_2", "user": "u1",
         "submitted_time": "2017-10-03 02:50:00", "attempts": []},
    ]))
    jobs = read_trace(path)
    assert len(jobs) == 1
    j = jobs[0]
    assert (j.job_id, j.tenant, j.workers, j.gpus_per_worker, j.duration) == ("application_1", "6214e9", 2, 2.0, 3600.0)


def test_pai_layout(tmp_path):
    (tmp_path / "pai_task_table.csv").write_text(
        "job1,worker,4,Terminated,100,400,600,29.0,100,V100\n"
        "job1,ps,1,Terminated,100,400,200,10.0,,\n"
        "job2,tensorflow,1,Terminated,150,160,400,5.0,50,T4\n"
        "job3,worker,1,Running,200,,600,29.0,100,V100\n")
    (tmp_path / "pai_job_table.csv").write_text("job1,i1,userA,Terminated,100,400\njob2,i2,userB,Terminated,150,160\n")
    jobs = {j.job_id: j for j in read_trace(tmp_path)}
    assert set(jobs) == {"job1", "job2"}
    assert (jobs["job1"].tenant, jobs["job1"].workers, jobs["job1"].gpus_per_worker, jobs["job1"].duration) == \
        ("usera", 4, 1.0, 300.0)
    assert jobs["job2"].gpus_per_worker == 0.5 and jobs["job2"].submit_time == 50


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_simulate_writes_summaries_and_plots(tmp_path, capsys):
    from lorafarm.cli.main import main

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(tenants_yaml(tenants=50, gpus=128))
    out = tmp_path / "out"
    rc = main(["simulate", "--generate", "300", "--seed", "3", "--gpus", "128", "--nodes", "16",
               "--tenants", str(tenants), "--out", str(out)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["policy"] for x in lines[:3]] == ["lorafarm", "fifo", "sjf"]
    assert lines[3].startswith("| policy |")
    summary = json.loads((out / "summary.json").read_text())
    assert [p["policy"] for p in summary["policies"]] == ["lorafarm", "fifo", "sjf"]
    assert all(p["quota_violations"] == 0 for p in summary["policies"])
    assert "share vs entitlement" in (out / "summary.md").read_text()
    for name in ("jct_cdf.png", "utilisation.png", "tenant_share_lorafarm.png", "tenant_share_fifo.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_reads_a_trace_and_one_policy(tmp_path, capsys):
    from lorafarm.cli.main import main

    trace = tmp_path / "t.csv"
    write_trace(ORDER, trace)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants: {default: {weight: 1}}\n")
    assert main(["simulate", "--trace", str(trace), "--gpus", "4", "--tenants", str(tenants), "--policy", "sjf"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["policy"] == "sjf" and first["avg_jct_s"] == pytest.approx((100 + 108 + 159) / 3, abs=0.1)


def test_cli_bad_input_exits_2_with_the_fix(tmp_path, capsys):
    from lorafarm.cli.main import main

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants: {default: {weight: 1}}\n")
    assert main(["simulate", "--trace", str(tmp_path / "none.csv"), "--gpus", "4", "--tenants", str(tenants)]) == 2
    assert main(["simulate", "--generate", "5", "--gpus", "0", "--tenants", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "--gpus" in err and "--tenants" in err


# -- the simulator and the live scheduler decide alike ----------------------------------------


def test_simulator_and_scheduler_core_make_the_same_decisions(tmp_path):
    """Record every (queue, running, cluster, clock) snapshot the simulator hands the policy, then
    give each snapshot to the scheduler's own core (fake clock, launcher and capacity: no Ray) and
    compare what each starts."""
    from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

    from lorafarm.scheduler.state import JobRecord, JobState

    snapshots = []

    def recording(queued, running, cluster, tenants, now):
        d = decide(queued, running, cluster, tenants, now)
        snapshots.append((list(queued), list(running), cluster, now, d.start))
        return d

    tenants_text = "policy: {aging_per_hour: 100}\ntenants:\n  default: {weight: 1, quota: {gpus: 6}}\n  t00: {weight: 2}\n"
    tenants = load_tenants(tenants_text)
    jobs = generate(120, seed=5, gpus=16, tenants=4, load=1.2, max_gang=8)
    Simulator(jobs, ClusterSpec(16), tenants, recording, estimates=False).run()
    assert len(snapshots) > 20

    runnable = spec()  # what the core hands the launcher; the gang sizes below are what the policy sees
    del runnable["training"]["max_steps"]  # epochs over rows not counted yet: no estimate, as the simulator
    for i, (queued, running, cluster, now, sim_start) in enumerate(snapshots):
        launcher = FakeLauncher()
        core = make_core(tmp_path / f"store-{i}", tenants_text, FakeClock(now), launcher,
                         FakeCapacity(cpus=cluster.total_cpus, gpus=cluster.total_gpus))
        for job, state in [(q, JobState.QUEUED) for q in queued] + [(r, JobState.RUNNING) for r in running]:
            core.adopt(JobRecord(
                job_id=job.job_id, tenant=job.tenant, name=job.job_id, spec=runnable, priority=job.priority,
                workers=job.workers, cpus_per_worker=job.cpus_per_worker, gpus_per_worker=job.gpus_per_worker,
                submitted_at=job.submitted_at, state=state, started_at=getattr(job, "started_at", None)))
        core.tick()
        assert tuple(launcher.started) == sim_start, f"at t={now}: scheduler {launcher.started} vs simulator {sim_start}"


# -- estimates: the estimator, not the truth ---------------------------------------------------


def test_generated_shapes_carry_steps_and_step_times_that_no_estimate_equals():
    jobs = generate(3000, seed=1, gpus=1000, tenants=50)
    plain = [(j.job_id, j.tenant, j.submit_time, j.workers, j.gpus_per_worker, j.duration) for j in jobs]
    assert plain[:3] == [(j.job_id, j.tenant, j.submit_time, j.workers, j.gpus_per_worker, j.duration)
                         for j in generate(3000, seed=1, gpus=1000, tenants=50)][:3]
    assert all(j.shape and j.steps >= 1 and j.prior_step_s > 0 for j in jobs)
    by_shape: dict[str, list[float]] = {}
    for j in jobs:
        by_shape.setdefault(j.shape, []).append(j.duration / j.steps)
    assert 20 <= len(by_shape) <= 100
    big = [v for v in by_shape.values() if len(v) >= 50]
    spread = [max(v) / min(v) for v in big]
    assert all(s > 1.2 for s in spread)  # per-job noise: the truth differs from any one figure
    ratios = [statistics.median(v) / j.prior_step_s for v in big for j in jobs[:1]]
    assert len({round(r, 3) for r in ratios}) > 1  # per-shape speed the FLOPs prior does not know


def test_estimator_mode_learns_and_beats_no_estimates():
    jobs = generate(1000, seed=3, gpus=128, tenants=6, load=1.0, max_gang=16)
    tenants = load_tenants(tenants_yaml(tenants=6, gpus=128))
    runs = {mode: Simulator(jobs, ClusterSpec(128, nodes=16), tenants, decide, estimates=mode)
            for mode in ("estimator", "none")}
    res = {mode: sim.run() for mode, sim in runs.items()}
    errors = runs["estimator"].estimates.errors({j.job_id: j.duration for j in jobs}, after=20)
    assert errors["jobs"] == 1000 and errors["median_abs_error_after_20_of_shape"] <= 0.25
    assert errors["median_abs_error"] <= 0.5  # the first jobs of a shape ran on the (calibrated) prior
    ours, blind = summarize(res["estimator"]), summarize(res["none"])
    assert ours["avg_jct_s"] < blind["avg_jct_s"]
    assert res["estimator"].quota_violations == 0 and res["estimator"].capacity_violations == 0


def test_lifted_jobs_bound_waiting_relative_to_size():
    """A job that has waited ``lift_after(its estimate)`` goes ahead of every unlifted job of its
    band, however short they are."""
    from lorafarm.policy.decide import LIFT, lift_after

    tenants = load_tenants("tenants:\n  default: {weight: 1}\n")
    before = lift_after(3600.0) - 1
    old = JobRequest("old", "a", 1, 1.0, 1.0, "normal", 0.0, 3600.0)
    fresh = [JobRequest(f"s{i}", "a", 1, 1.0, 1.0, "normal", before - 1000 + 100 * i, 60.0) for i in range(5)]
    cluster = ClusterState(100, 1, 100, 1)
    assert decide([old, *fresh], [], cluster, tenants, before).start == ("s0",)  # shortest first...
    assert decide([old, *fresh], [], cluster, tenants, before + 2).start == ("old",)  # ...until it is lifted
    assert lift_after(60.0) == LIFT.floor_s + LIFT.k * 60.0 and lift_after(1e9) == LIFT.cap_s
    assert lift_after(None) == LIFT.cap_s


def test_simulator_and_scheduler_core_decide_alike_with_estimates(tmp_path, monkeypatch):
    """The same snapshots, estimates included: the simulator's estimator (as JSON) is what the
    core loads from its store; both hand ``decide`` the same estimated durations and start the same jobs."""
    import random
    from types import SimpleNamespace

    from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

    from lorafarm.estimate import Estimator
    from lorafarm.estimate.live import LiveEstimates
    from lorafarm.estimate.persist import save_estimator
    from lorafarm.scheduler.state import JobRecord, JobState
    rng = random.Random(3)
    probe = LiveEstimates(str(tmp_path / "probe"))
    variants = []
    for seq, r in ((64, 8), (128, 8), (64, 16)):
        s = spec("t0", "v")
        s["training"].update(seq_len=seq, warmup_steps=0)
        s["lora"]["r"] = r
        s["resources"].update(gpus_per_worker=1, cpus_per_worker=1)
        variants.append(s)
    jobs, specs = [], {}
    for i in range(90):
        v = rng.randrange(3)
        s = json.loads(json.dumps(variants[v]))
        s["training"]["max_steps"] = rng.choice([10, 50, 200, 800])
        s["tenant"] = f"t{i % 3}"
        shape = probe.shape(SimpleNamespace(job_id=str(i), spec=s))
        step_s = shape.prior_s * (2 + v) * rng.lognormvariate(0, 0.1)
        jobs.append(SimJob(f"j{i:03d}", s["tenant"], 15.0 * i, 1, 1.0, s["training"]["max_steps"] * step_s,
                           shape=shape.key, steps=s["training"]["max_steps"], prior_step_s=shape.prior_s))
        specs[f"j{i:03d}"] = s
    tenants_text = "tenants:\n  default: {weight: 1}\n"
    snapshots = []

    def recording(queued, running, cluster, tenants, now):
        d = decide(queued, running, cluster, tenants, now)
        snapshots.append((list(queued), list(running), cluster, now, d.start,
                          json.dumps(sim.estimates.estimator.to_json())))
        return d

    sim = Simulator(jobs, ClusterSpec(4, cpus=64), load_tenants(tenants_text), recording, estimates="estimator")
    sim.run()
    assert len(snapshots) > 30
    assert sum(1 for q, *_ in snapshots for j in q if j.estimated_duration is not None) > 100

    from lorafarm.policy.queue import QueueIndex

    seen: list = []  # the queue the core's policy call sees (its QueueIndex makes decide's decision)
    index_decide = QueueIndex.decide
    monkeypatch.setattr(QueueIndex, "decide", lambda self, *a: seen.append(list(self.jobs())) or index_decide(self, *a))
    for i, (queued, running, cluster, now, sim_start, estimator) in enumerate(snapshots[::3]):
        store = tmp_path / f"store-{i}"
        save_estimator(str(store), Estimator.from_json(json.loads(estimator)))
        launcher = FakeLauncher()
        core = make_core(store, tenants_text, FakeClock(now), launcher,
                         FakeCapacity(cpus=cluster.total_cpus, gpus=cluster.total_gpus))
        for job, state in [(q, JobState.QUEUED) for q in queued] + [(r, JobState.RUNNING) for r in running]:
            core.adopt(JobRecord(
                job_id=job.job_id, tenant=job.tenant, name=job.job_id, spec=specs[job.job_id], priority=job.priority,
                workers=job.workers, cpus_per_worker=job.cpus_per_worker, gpus_per_worker=job.gpus_per_worker,
                submitted_at=job.submitted_at, state=state, started_at=getattr(job, "started_at", None)))
        seen.clear()
        core.tick()
        live = {j.job_id: j.estimated_duration for j in seen[0]}
        for q in queued:
            assert live[q.job_id] == pytest.approx(q.estimated_duration), (now, q.job_id)
        assert tuple(launcher.started) == sim_start, f"at t={now}: scheduler {launcher.started} vs simulator {sim_start}"
