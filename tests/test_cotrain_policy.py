"""Co-training packs as a policy decision (``lorafarm.policy.packing``) and in the scheduler's core
(fake launcher): who may be packed, quotas by share, preemption of whole packs, members as jobs."""

from __future__ import annotations

import random

from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

from lorafarm.events import RunOutcome, RunState
from lorafarm.policy import ClusterState, JobRequest, RunningJob, choose_victims, decide
from lorafarm.policy.packing import member_view
from lorafarm.policy.queue import QueueIndex
from lorafarm.policy.quota import usage_by_tenant
from lorafarm.tenants import load_tenants

TENANTS = load_tenants("""
policy: {preemption: true}
tenants:
  default: {weight: 1}
  a: {co_training: true}
  b: {co_training: true, quota: {cpus: 1}}
  c: {}
""")
KEY = "base-1"


def job(job_id, tenant, at=0.0, key=KEY, cpus=2.0, workers=1, priority="normal"):
    return JobRequest(job_id, tenant, workers, cpus, 0.0, priority, at, pack_key=key)


def cpus(n):
    return ClusterState(n, 0.0, n, 0.0)


def test_only_co_training_tenants_are_packed_and_only_on_equal_keys():
    queued = [job("a1", "a", 0), job("c1", "c", 1), job("b1", "b", 2), job("a2", "a", 3, key="other"),
              job("a3", "a", 4, key=None), job("a4", "a", 5, cpus=1.0)]
    d = decide(queued, [], cpus(2), TENANTS, 10)
    assert d.start == ("a1",) and d.packs == {"a1": ("b1",)}  # c has no co_training; other key, None, other shape
    assert decide([job("c1", "c"), job("c2", "c", 1)], [], cpus(2), TENANTS, 10).packs == {}


def test_jobs_about_to_start_alone_fold_into_one_pack():
    d = decide([job("a1", "a", 0), job("a2", "a", 1)], [], cpus(8), TENANTS, 10)
    assert d.start == ("a1",) and d.packs == {"a1": ("a2",)}  # a2's own gang stays free


def test_quota_counts_each_member_by_its_share():
    # b: quota 1 CPU. On a 2-CPU gang a pack of 2 charges b 1 CPU; a second b job would make it 4/3
    d = decide([job("a1", "a", 0), job("b1", "b", 1), job("b2", "b", 2), job("a2", "a", 3)], [], cpus(2),
               TENANTS, 10)
    assert d.packs == {"a1": ("b1", "a2")}
    # b alone could never start a 2-CPU job (quota 1), but may join a pack of 2 for its share
    d = decide([job("b1", "b", 0), job("a1", "a", 1)], [], cpus(2), TENANTS, 10)
    assert d.start == ("a1",) and d.packs == {"a1": ("b1",)}


def test_member_cap():
    capped = TENANTS.model_copy(update={"policy": TENANTS.policy.model_copy(update={"co_training_max_members": 2})})
    d = decide([job(f"a{i}", "a", i) for i in range(5)], [], cpus(2), capped, 10)
    assert d.packs == {"a0": ("a1",)}
    one = TENANTS.model_copy(update={"policy": TENANTS.policy.model_copy(update={"co_training_max_members": 1})})
    assert decide([job(f"a{i}", "a", i) for i in range(5)], [], cpus(2), one, 10).packs == {}


def test_a_pack_never_exceeds_any_member_tenants_quota_on_random_queues():
    tenants = load_tenants("""
policy: {co_training_join_after_s: 0}
tenants:
  default: {weight: 1}
  p: {co_training: true, quota: {cpus: 3, workers: 2}}
  q: {co_training: true, quota: {cpus: 1.5}}
  r: {co_training: true}
  s: {quota: {cpus: 4}}
""")
    rng = random.Random(7)
    packed = regrouped = 0
    for trial in range(300):
        queued = [JobRequest(f"j{i}", rng.choice("pqrs"), rng.choice((1, 2)), rng.choice((1.0, 2.0)), 0.0, "normal",
                             float(i), pack_key=rng.choice(("k1", "k2", None))) for i in range(rng.randint(1, 12))]
        running_key = rng.choice(("k1", "k2"))
        running = [member_view(job(f"x{i}", "p"), 2, f"x{i}", t, "normal", 0.0, 0.0, pack="P", pack_key=running_key)
                   for i, t in enumerate(rng.sample("pqr", 2))] if rng.random() < 0.6 else []
        total = rng.choice((2.0, 4.0, 8.0))
        free = total - sum(r.cpus for r in running)
        d = decide(queued, running, ClusterState(total, 0.0, free, 0.0), tenants, 100.0)
        by_id = {j.job_id: j for j in queued}
        views = list(running)
        for joiners in d.regroup.values():  # the pack starts again with them: every share is 1/(2 + joiners)
            regrouped += 1
            k = len(running) + len(joiners)
            gang = job("g", "p", cpus=2.0)
            views = [member_view(gang, k, r.job_id, r.tenant, "normal", 0.0, 0.0, pack="P") for r in running]
            views += [member_view(gang, k, j, by_id[j].tenant, "normal", 0.0, 0.0, pack="P") for j in joiners]
            assert all(by_id[j].pack_key == running_key and tenants.co_training(by_id[j].tenant) for j in joiners)
            assert all(j not in d.start and j not in {m for ms in d.packs.values() for m in ms} for j in joiners)
        for lead in d.start:
            members = [lead, *d.packs.get(lead, ())]
            packed += len(members) > 1
            for m in members:
                views.append(member_view(by_id[lead], len(members), m, by_id[m].tenant, "normal", 0.0, 0.0, pack=lead)
                             if len(members) > 1 else RunningJob(m, by_id[m].tenant, by_id[m].workers,
                                                                 by_id[m].cpus_per_worker, 0.0, "normal", 0.0, 0.0))
                assert tenants.co_training(by_id[m].tenant) or len(members) == 1
                assert by_id[m].pack_key == by_id[lead].pack_key or len(members) == 1
        for tenant, u in usage_by_tenant(views).items():
            assert not u.over(tenants.quota(tenant)), (trial, tenant, u, d)
        assert sum(v.cpus for v in views) <= total + 1e-9
        index = QueueIndex(tenants)
        for j in queued:
            index.put(j, 100.0)
        assert index.decide(running, ClusterState(total, 0.0, free, 0.0), 100.0) == d  # the queue's path agrees
    assert packed > 25 and regrouped > 25  # the property was exercised


def test_preemption_takes_a_pack_whole_or_not_at_all():
    lead = job("l1", "a", cpus=2.0, priority="low")
    low = [member_view(lead, 2, j, "a", "low", 0.0, 1.0, pack="P") for j in ("l1", "l2")]
    head = job("h", "c", cpus=2.0, priority="high", key=None)
    assert sorted(choose_victims(head, low, cpus(2) if False else ClusterState(2.0, 0.0, 0.0, 0.0), TENANTS)) == \
        ["l1", "l2"]  # one member alone frees nothing: the pack goes as one
    mixed = [low[0], member_view(lead, 2, "l2", "a", "high", 0.0, 1.0, pack="P")]
    assert choose_victims(head, mixed, ClusterState(2.0, 0.0, 0.0, 0.0), TENANTS) == ()  # not all lower class


# -- the core: members are jobs ----------------------------------------------------------------

CORE_TENANTS = """
tenants:
  default: {weight: 1}
  a: {co_training: true}
  b: {co_training: true}
  c: {}
"""


def test_core_starts_a_pack_of_separate_jobs_and_each_ends_alone(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    core = make_core(tmp_path / "store", CORE_TENANTS, clock, launcher, FakeCapacity(cpus=1))
    a = core.submit(spec("a", "ja"))["job_id"]
    b = core.submit(spec("b", "jb"))["job_id"]
    c = core.submit(spec("c", "jc"))["job_id"]
    never = core.submit({**spec("a", "jn"), "training": {**spec()["training"], "co_train": "never"}})["job_id"]
    core.tick()
    assert [ids for _, ids in launcher.packs] == [[a, b]] and launcher.started == []
    pack_id = launcher.packs[0][0]
    for j in (a, b):
        s = core.status(j)
        assert s["state"] == "RUNNING" and s["pack_members"] == 2
        assert "co-trained: one of 2 jobs" in core.events(j)[-1]["message"]
        assert c not in s["events"] if "events" in s else True
    assert core.status(c)["state"] == "QUEUED" and core.status(never)["state"] == "QUEUED"
    usage = {r["tenant"]: r["usage"] for r in core.tenants_usage()}
    assert usage["a"]["cpus"] == 0.5 and usage["b"]["cpus"] == 0.5 and usage["a"]["workers"] == 0.5
    # b publishes first: SUCCEEDED alone, a trains on
    launcher.end(b, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///x", metrics={"co_trained": {"members": 2}}))
    core.tick()
    assert core.status(b)["state"] == "SUCCEEDED" and core.status(a)["state"] == "RUNNING"
    assert core.status(c)["state"] == "QUEUED"  # a holds the gang until it leaves
    # a is cancelled: the launcher stops that member; the gang frees; c (not co-training) starts alone
    core.cancel(a)
    assert a in launcher.killed
    core.tick()
    assert launcher.started == [c] and core.status(c)["pack_members"] is None
    # recovery: a RUNNING member's leftover runner is its pack's
    launcher.end(c, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///y"))
    core.tick()
    assert core.status(never)["state"] == "RUNNING" and core.status(never)["pack_members"] is None
    del pack_id


def test_core_recovery_stops_the_packs_runner(tmp_path):
    launcher = FakeLauncher()
    core = make_core(tmp_path / "store", CORE_TENANTS, FakeClock(), launcher, FakeCapacity(cpus=1))
    ids = [core.submit(spec(t, f"j{t}"))["job_id"] for t in ("a", "b")]
    core.tick()
    pack_id = launcher.packs[0][0]
    again = FakeLauncher()
    core2 = make_core(tmp_path / "store", CORE_TENANTS, FakeClock(), again, FakeCapacity(cpus=1))
    assert again.leftovers_killed == [pack_id, pack_id]
    assert all(core2.status(j)["state"] == "QUEUED" for j in ids)
    core2.tick()
    assert [m for _, m in again.packs] == [ids]  # packed again, resuming from their own checkpoints


def test_preempted_member_requeues_alone(tmp_path):
    launcher = FakeLauncher()
    core = make_core(tmp_path / "store", CORE_TENANTS, FakeClock(), launcher, FakeCapacity(cpus=1))
    a, b = (core.submit(spec(t, f"j{t}"))["job_id"] for t in ("a", "b"))
    core.tick()
    launcher.end(a, RunOutcome(RunState.PREEMPTED, step=3))
    core.tick()
    assert core.status(a)["state"] == "QUEUED" and core.status(a)["last_checkpoint_step"] == 3
    assert core.status(b)["state"] == "RUNNING"


def test_a_failed_pack_gang_requeues_its_members_alone_but_a_members_own_failure_fails_it(tmp_path):
    from lorafarm.cotrain.compat import PACK_FAILED

    launcher = FakeLauncher()
    core = make_core(tmp_path / "store", CORE_TENANTS, FakeClock(), launcher, FakeCapacity(cpus=1))
    a, b = (core.submit(spec(t, f"j{t}"))["job_id"] for t in ("a", "b"))
    core.tick()
    launcher.end(b, RunOutcome.failed("bad.jsonl line 301: not JSON"))  # its own data: it fails alone
    launcher.end(a, RunOutcome.failed(PACK_FAILED + "RayActorError: a worker died"))
    core.tick()
    assert core.status(b)["state"] == "FAILED"
    assert any("re-queued to run alone" in e["message"] for e in core.events(a))
    assert launcher.started == [a] and core.status(a)["pack_members"] is None  # restarted alone at once
    assert core.jobs[a].pack_key is None  # and never packed again


JOIN_TENANTS = CORE_TENANTS.replace("tenants:\n", "policy: {co_training_join_after_s: 60}\ntenants:\n", 1)


def long_spec(tenant, name):
    """Long enough (by its estimate) that regrouping its pack is worth a restart."""
    s = spec(tenant, name)
    s["training"]["max_steps"] = 100_000
    return s


def test_a_waiting_job_joins_a_running_pack_by_regrouping_it(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    core = make_core(tmp_path / "store", JOIN_TENANTS, clock, launcher, FakeCapacity(cpus=1))
    a, b = (core.submit(long_spec(t, f"j{t}"))["job_id"] for t in ("a", "b"))
    core.tick()
    late = core.submit(long_spec("a", "late"))["job_id"]
    core.tick()
    assert launcher.preempted == []  # the pack has not run co_training_join_after_s yet
    clock.advance(61)
    core.tick()
    assert sorted(launcher.preempted) == sorted([a, b])  # every member checkpoints, once
    assert "2 more job(s)" not in core.events(a)[-1]["message"] and "1 more job(s) join" in core.events(a)[-1]["message"]
    core.tick()
    assert sorted(launcher.preempted) == sorted([a, b])
    launcher.end(a, RunOutcome(RunState.PREEMPTED, step=5))
    core.tick()
    assert core.status(a)["state"] == "RUNNING"  # holds its share until the whole pack has checkpointed
    assert core.status(late)["state"] == "QUEUED"
    launcher.end(b, RunOutcome(RunState.PREEMPTED, step=5))
    core.tick()
    assert [sorted(m) for _, m in launcher.packs] == [sorted([a, b]), sorted([a, b, late])]
    assert all(core.status(j)["pack_members"] == 3 for j in (a, b, late))
    assert core.status(a)["last_checkpoint_step"] == 5
    usage = {r["tenant"]: r["usage"]["cpus"] for r in core.tenants_usage()}
    assert abs(usage["a"] - 2 / 3) < 1e-9 and abs(usage["b"] - 1 / 3) < 1e-9
    assert core.metrics.preemptions.labels("a")._value.get() == 0  # a regroup is not a preemption


def test_no_regroup_for_tenants_without_co_training_or_a_full_pack(tmp_path):
    clock, launcher = FakeClock(), FakeLauncher()
    capped = JOIN_TENANTS.replace("co_training_join_after_s: 60", "co_training_join_after_s: 60, "
                                  "co_training_max_members: 2")
    core = make_core(tmp_path / "store", capped, clock, launcher, FakeCapacity(cpus=1))
    for t in ("a", "b"):
        core.submit(long_spec(t, f"j{t}"))
    core.tick()
    core.submit(long_spec("c", "no-co"))
    core.submit(long_spec("a", "full"))
    clock.advance(120)
    core.tick()
    assert launcher.preempted == []
