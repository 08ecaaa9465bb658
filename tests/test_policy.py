"""The pure scheduling policy: one test per rule, then a property test over random workloads."""

from __future__ import annotations

import random

import pytest

from lorafarm.policy import (
    ClusterState,
    JobRequest,
    NodeState,
    RunningJob,
    check_admissible,
    choose_victims,
    decide,
    rank,
)
from lorafarm.policy.baselines import POLICIES, fifo, sjf
from lorafarm.tenants import load_tenants

HOUR = 3600.0

TENANTS = load_tenants("""
priority_classes: {low: 0, normal: 100, high: 1000}
policy: {aging_per_hour: 100, backfill: true}
tenants:
  default: {weight: 1}
  a: {weight: 2, quota: {gpus: 8, workers: 8}}
  b: {weight: 1, quota: {gpus: 8}}
  c: {weight: 1}
""")


def job(job_id, tenant="c", workers=1, gpus=1.0, cpus=1.0, priority="normal", at=0.0, est=None):
    return JobRequest(job_id, tenant, workers, cpus, gpus, priority, at, est)


def run(job_id, tenant="c", workers=1, gpus=1.0, cpus=1.0, priority="normal", started=0.0, placement=()):
    return RunningJob(job_id, tenant, workers, cpus, gpus, priority, 0.0, started, None, placement)


def pool(gpus, cpus=1000.0, free_gpus=None, free_cpus=None):
    return ClusterState(cpus, gpus, cpus if free_cpus is None else free_cpus, gpus if free_gpus is None else free_gpus)


def nodes(*free, gpus=8.0, cpus=64.0):
    return ClusterState.from_nodes([NodeState(f"n{i}", cpus, gpus, cpus, f) for i, f in enumerate(free)])


# -- gangs ------------------------------------------------------------------------------------


def test_gang_starts_whole_or_not_at_all():
    d = decide([job("big", workers=2, gpus=3)], [], pool(8, free_gpus=4), TENANTS, 0)
    assert d.start == () and d.reserved_for == "big"  # 6 GPUs needed, 4 free: nothing partial
    d = decide([job("big", workers=2, gpus=3)], [], pool(8, free_gpus=6), TENANTS, 0)
    assert d.start == ("big",)


def test_gang_needs_every_worker_on_some_node():
    # 4 GPUs free in total, but as 2 + 2: a 1×4 worker fits nowhere; 2×2 fits (one per node)
    cluster = nodes(2, 2)
    assert decide([job("w4", gpus=4)], [], cluster, TENANTS, 0).start == ()
    d = decide([job("w2x2", workers=2, gpus=2)], [], cluster, TENANTS, 0)
    assert d.start == ("w2x2",)
    assert sorted(d.placements["w2x2"]) == [("n0", 1), ("n1", 1)]


def test_placement_is_whole_and_best_fit():
    cluster = nodes(8, 3, 6)
    d = decide([job("x", workers=3, gpus=2)], [], cluster, TENANTS, 0)
    placement = dict(d.placements["x"])
    assert sum(placement.values()) == 3
    assert placement == {"n1": 1, "n2": 2}  # fullest nodes first, the empty node kept whole
    for name, n in placement.items():
        free = {"n0": 8, "n1": 3, "n2": 6}[name]
        assert n * 2 <= free


# -- quotas -----------------------------------------------------------------------------------


def test_quota_is_never_exceeded():
    running = [run("r", "b", gpus=6)]
    queued = [job("b1", "b", gpus=4, at=1), job("b2", "b", gpus=2, at=2), job("b3", "b", gpus=1, at=3)]
    d = decide(queued, running, pool(100), TENANTS, 10)
    assert d.start == ("b2",)  # 6 + 2 = 8 = quota; b1 would make 10, b3 after b2 would make 9
    assert d.reserved_for is None  # a quota-blocked job holds no reservation on the cluster


def test_worker_quota_counts_workers():
    queued = [job(f"a{i}", "a", workers=3, gpus=0, cpus=1, at=i) for i in range(4)]
    d = decide(queued, [], pool(0, 100), TENANTS, 10)
    assert d.start == ("a0", "a1")  # 9 workers would exceed a's quota of 8


# -- fair share -------------------------------------------------------------------------------


def test_weighted_fair_share_between_tenants():
    quota_free = load_tenants("tenants: {default: {weight: 1}, x: {weight: 2}, y: {weight: 1}}")
    queued = [job(f"x{i}", "x", at=i) for i in range(10)] + [job(f"y{i}", "y", at=i) for i in range(10)]
    d = decide(queued, [], pool(6), quota_free, 100)
    started = [j for j in d.start]
    assert sum(j.startswith("x") for j in started) == 4 and sum(j.startswith("y") for j in started) == 2


def test_fair_share_counts_what_tenants_already_hold():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    running = [run("rx", "x", gpus=3)]
    queued = [job("x1", "x", at=0), job("y1", "y", at=5)]
    assert decide(queued, running, pool(4, free_gpus=1), quota_free, 10).start == ("y1",)


def test_dominant_resource_decides_share():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    # x holds half the CPUs (dominant), y holds a quarter of the GPUs: y's dominant share is smaller
    running = [run("rx", "x", gpus=0, cpus=50), run("ry", "y", gpus=2, cpus=1)]
    queued = [job("x1", "x", at=0), job("y1", "y", at=1)]
    d = decide(queued, running, ClusterState(100, 8, 49, 6), quota_free, 10)
    assert d.start[0] == "y1"


# -- priority classes and aging ---------------------------------------------------------------


def test_priority_classes_come_first_regardless_of_share_and_age():
    queued = [job("low", "c", priority="low", at=0), job("norm", "c", at=10), job("high", "b", priority="high", at=20)]
    d = decide(queued, [run("rb", "b", gpus=4)], pool(8, free_gpus=2), TENANTS, 30)
    assert d.start == ("high", "norm")


def test_aging_promotes_a_waiting_job_to_the_next_class():
    queued = [job("old-low", "c", priority="low", at=0), job("new", "c", at=HOUR - 1)]
    assert decide(queued, [], pool(1), TENANTS, HOUR - 1).start == ("new",)  # 59 min: still low
    assert decide(queued, [], pool(1), TENANTS, HOUR).start == ("old-low",)  # 1 h: normal, and older
    assert rank(queued[0], TENANTS, 2.5 * HOUR) == 200  # whole hours only


def test_long_wait_reaches_the_top_class_and_is_served_in_order():
    # 9 whole hours of aging lift a normal job (100 + 900) into the top band with high jobs
    queued = [job("norm", "c", at=0, est=1e6), job("high", "c", priority="high", at=9 * HOUR - 5, est=1.0)]
    assert decide(queued, [], pool(1), TENANTS, 9 * HOUR - 1).start == ("high",)
    assert decide(queued, [], pool(1), TENANTS, 9 * HOUR).start == ("norm",)  # top band: oldest first


def test_within_a_tenant_shorter_estimates_go_first_but_not_across_tenants():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    queued = [job("long", "x", at=0, est=5000), job("short", "x", at=10, est=50), job("unknown", "x", at=5)]
    assert decide(queued, [], pool(2), quota_free, 20).start == ("short", "long")
    # between tenants fair share and submission decide, not estimates
    queued = [job("x-long", "x", at=0, est=5000), job("y-short", "y", at=10, est=50)]
    assert decide(queued, [], pool(1), quota_free, 20).start == ("x-long",)


def test_no_job_starves_behind_a_stream_of_small_jobs():
    """A 4-GPU job of a tenant with a lower share is blocked while 1-GPU jobs keep arriving: the
    reservation stops the small jobs from taking the GPUs it waits for."""
    tenants = load_tenants("tenants: {default: {weight: 1}}")
    running = {f"r{i}": (run(f"r{i}", "s", started=0), 100.0 * (i + 1)) for i in range(4)}
    queued = {"big": job("big", "b", gpus=4, at=0)}
    t, started_big = 0.0, None
    for step in range(60):
        t = step * 50.0
        for k in [k for k, (_, end) in running.items() if end <= t]:
            del running[k]
        queued[f"s{step}"] = job(f"s{step}", "s", at=t)
        d = decide(list(queued.values()), [r for r, _ in running.values()], pool(4, free_gpus=4 - len(running)),
                   tenants, t)
        for job_id in d.start:
            j = queued.pop(job_id)
            running[job_id] = (run(job_id, j.tenant, gpus=j.gpus_per_worker * j.workers, started=t), t + 100.0)
            if job_id == "big":
                started_big = t
        if started_big is not None:
            break
    assert started_big is not None and started_big <= 400.0  # as soon as the 4 first jobs are done


# -- reservation and backfill -----------------------------------------------------------------


def test_backfill_uses_only_what_the_blocked_head_cannot():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    head = job("head", "x", gpus=6, cpus=2, at=0)
    gpu_small = job("gpu-small", "x", gpus=1, cpus=1, at=1)
    cpu_only = job("cpu-only", "x", gpus=0, cpus=4, at=2)
    d = decide([head, gpu_small, cpu_only], [], pool(8, cpus=16, free_gpus=4, free_cpus=16), quota_free, 10)
    assert d.reserved_for == "head"
    assert d.start == ("cpu-only",)  # the GPUs are held for the head; CPUs beyond its 2 are not


def test_backfill_on_nodes_the_head_can_never_use():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    # head: 2 workers of 8 GPUs; node n2 has only 4 GPUs in all, so the head can never use it
    cluster = ClusterState.from_nodes([NodeState("n0", 64, 8, 64, 6), NodeState("n1", 64, 8, 64, 8),
                                       NodeState("n2", 64, 4, 64, 4)])
    queued = [job("head", "x", workers=2, gpus=8, at=0), job("small", "x", gpus=2, at=1)]
    d = decide(queued, [], cluster, quota_free, 10)
    assert d.reserved_for == "head" and d.start == ("small",)
    assert d.placements["small"] == (("n2", 1),)


def running_for(job_id, gpus, started, est, tenant="r"):
    return RunningJob(job_id, tenant, 1, 1.0, gpus, "normal", 0.0, started, est)


def test_a_job_that_ends_before_the_head_can_start_runs_in_its_reservation():
    """EASY backfill: the head (6 GPUs, 4 free) fits when the running job ends at t=100 (its
    estimate); a job expected to end by then may use the reserved GPUs, one that ends later or
    has no estimate may not, and without estimates for the running jobs nothing passes."""
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    blocker = running_for("blocker", 4, started=0.0, est=100.0)
    head = job("head", "x", gpus=6, at=0, priority="high")  # first in line whatever the estimates
    short = job("short", "x", gpus=2, at=1, est=50.0)  # now 10 + 50 <= 100
    long_ = job("long", "x", gpus=2, at=2, est=95.0)  # 10 + 95 > 100
    unknown = job("unknown", "x", gpus=2, at=3)
    cluster = pool(8, free_gpus=4)
    d = decide([head, short, long_, unknown], [blocker], cluster, quota_free, 10.0)
    assert d.reserved_for == "head" and d.start == ("short",)
    no_estimate = running_for("blocker", 4, started=0.0, est=None)
    assert decide([head, short], [no_estimate], cluster, quota_free, 10.0).start == ()
    # two short jobs of 2 GPUs each both fit by t=100; a third (no GPUs left) does not
    d = decide([head, short, job("short2", "x", gpus=2, at=4, est=80.0), job("short3", "x", gpus=2, at=5, est=10.0)],
               [blocker], cluster, quota_free, 10.0)
    assert set(d.start) == {"short", "short2"} or set(d.start) == {"short", "short3"}
    assert len(d.start) == 2


def test_the_shadow_counts_jobs_started_in_the_same_decision():
    """A job that starts in this decision holds its GPUs until its own estimated end: the head
    can only start after it too, so the shadow moves out and a longer job may then backfill."""
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    first = job("first", "x", gpus=4, at=0, est=500.0, priority="high")  # fits now, ends at 510
    head = job("head", "x", gpus=8, at=1, priority="high")  # needs all 8: after "first" ends
    mid = job("mid", "x", gpus=2, at=2, est=300.0)  # ends at 310 <= 510, in the reservation
    d = decide([first, head, mid], [running_for("other", 2, started=0.0, est=50.0)], pool(8, free_gpus=6),
               quota_free, 10.0)
    assert d.reserved_for == "head" and d.start == ("first", "mid")


def test_the_head_is_not_delayed_when_estimates_hold():
    """Replay with exact durations: a small head blocked by one long job starts when it ends,
    whatever short jobs backfilled in front of it."""
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    blocker = running_for("blocker", 6, started=0.0, est=100.0)
    head = job("head", "x", gpus=4, at=0, priority="high")
    shorts = [job(f"s{i}", "x", gpus=1, at=1 + i, est=30.0) for i in range(4)]
    late = job("late", "x", gpus=2, at=10, est=80.0)  # would end after t=100 wherever it started: must wait
    running, queued, now = [blocker], [head, *shorts, late], 0.0
    ends = {"blocker": 100.0}
    started_head = None
    while started_head is None and now <= 200:
        free = 8 - sum(r.gpus_per_worker for r in running)
        d = decide(queued, running, pool(8, free_gpus=free), quota_free, now)
        for job_id in d.start:
            j = next(q for q in queued if q.job_id == job_id)
            queued.remove(j)
            if job_id == "head":
                started_head = now
            running.append(RunningJob(job_id, "x", 1, 1.0, j.gpus_per_worker, "normal", j.submitted_at, now,
                                      j.estimated_duration))
            ends[job_id] = now + (j.estimated_duration or 1e9)
        now = min(e for e in ends.values() if e > now)  # next end
        running = [r for r in running if ends[r.job_id] > now]
    assert started_head == 100.0
    assert ends.get("late", 1e9) - 80.0 >= 100.0  # not started, or not before the head


def test_without_backfill_nothing_passes_the_head():
    no_backfill = load_tenants("policy: {backfill: false}\ntenants: {default: {weight: 1}}")
    queued = [job("head", "x", gpus=6, at=0), job("cpu-only", "x", gpus=0, at=1)]
    assert decide(queued, [], pool(8, free_gpus=4), no_backfill, 10).start == ()


# -- jobs that can never fit ------------------------------------------------------------------


def test_check_admissible_names_the_quota_and_where_it_is_set():
    reason = check_admissible(job("j", "b", workers=2, gpus=8), TENANTS, {"cpus": 100, "gpus": 100})
    assert "16 GPUs (2 workers × 8)" in reason and "quota allows 8" in reason
    assert "tenants.b.quota.gpus" in reason and "—" in reason


def test_check_admissible_names_the_default_entry_for_unlisted_tenants():
    tenants = load_tenants("tenants: {default: {quota: {workers: 2}}}")
    reason = check_admissible(job("j", "zed", workers=3, gpus=0), tenants, {"cpus": 100, "gpus": 0})
    assert "tenants.default.quota.workers" in reason and "not listed" in reason


def test_check_admissible_names_the_cluster_and_node_limits():
    assert "whole cluster has 8" in check_admissible(job("j", gpus=16), TENANTS, {"cpus": 100, "gpus": 8})
    reason = check_admissible(job("j", gpus=12), TENANTS, nodes(8, 8))
    assert "no node has that much" in reason and "largest: 64 CPUs, 8 GPUs" in reason
    reason = check_admissible(job("j", workers=3, gpus=5), TENANTS, nodes(8, 8))
    assert "at most 2 fit" in reason
    assert check_admissible(job("j", workers=2, gpus=8), TENANTS, nodes(0, 0)) is None  # busy now, fits idle


def test_decide_reports_never_fits_and_does_not_reserve_for_it():
    queued = [job("huge", "c", gpus=100, at=0), job("ok", "c", gpus=1, at=1)]
    d = decide(queued, [], pool(8), TENANTS, 10)
    assert "huge" in d.never_fits and "whole cluster has 8" in d.never_fits["huge"]
    assert d.start == ("ok",) and d.reserved_for is None


# -- preemption -------------------------------------------------------------------------------


PREEMPT = load_tenants("policy: {preemption: true}\ntenants: {default: {weight: 1}}")


def test_preemption_picks_fewest_newest_lower_class_victims():
    running = [run("low-old", priority="low", gpus=2, started=10), run("low-new", priority="low", gpus=2, started=50),
               run("low-big", priority="low", gpus=4, started=20), run("norm", gpus=0, cpus=1, started=60)]
    cluster = pool(8, free_gpus=0)
    d = decide([job("h", "x", gpus=2, priority="high", at=100)], running, cluster, PREEMPT, 100)
    assert d.preempt == ("low-new",) and d.preempt_for == "h"
    d = decide([job("h", "x", gpus=4, priority="high", at=100)], running, cluster, PREEMPT, 100)
    assert d.preempt == ("low-big",)  # one victim beats two newer small ones (fewest first)


def test_preemption_never_takes_equal_or_higher_class():
    running = [run("n1", gpus=4, started=1), run("h1", priority="high", gpus=4, started=2)]
    d = decide([job("n", "x", gpus=4, at=5)], running, pool(8, free_gpus=0), PREEMPT, 10)
    assert d.preempt == () and d.reserved_for == "n"
    assert choose_victims(job("h", gpus=4, priority="high"), running, pool(8, free_gpus=0), PREEMPT) == ("n1",)


def test_preemption_finds_its_head_on_a_completely_full_cpu_cluster():
    # nothing free at all (a CPU-only cluster, every CPU held): the blocked head is still found
    running = [run("low", "a", workers=2, gpus=0, cpus=1, priority="low", started=1)]
    full = pool(0, cpus=2, free_cpus=0)
    d = decide([job("h", "b", workers=2, gpus=0, cpus=1, priority="high", at=5)], running, full, PREEMPT, 10)
    assert d.preempt == ("low",) and d.preempt_for == "h" and d.start == ()
    d = decide([job("n", "b", workers=2, gpus=0, cpus=1, priority="low", at=5)], running, full, PREEMPT, 10)
    assert d.preempt == () and d.start == ()  # an equal class waits


def test_preemption_never_takes_a_tenant_below_its_guarantee():
    guarded = load_tenants("policy: {preemption: true}\ntenants:\n  default: {weight: 1}\n"
                           "  a: {guaranteed: {gpus: 4}}\n")
    running = [run("a-old", "a", priority="low", gpus=4, started=1), run("a-new", "a", priority="low", gpus=4, started=2),
               run("b1", "b", priority="low", gpus=4, started=3)]
    full = pool(12, free_gpus=0)
    # a holds 8 with 4 guaranteed: one of its jobs may go, never both; b has no guarantee
    assert decide([job("h", "x", gpus=4, priority="high", at=5)], running, full, guarded, 10).preempt == ("b1",)
    assert decide([job("h", "x", gpus=8, priority="high", at=5)], running, full, guarded, 10).preempt == ("b1", "a-new")
    d = decide([job("h", "x", gpus=12, priority="high", at=5)], running, full, guarded, 10)
    assert d.preempt == () and d.reserved_for == "h"  # it would need all of a's guaranteed GPUs


def test_preemption_is_off_unless_the_tenants_file_enables_it():
    running = [run("low", priority="low", gpus=8)]
    assert decide([job("h", gpus=8, priority="high")], running, pool(8, free_gpus=0), TENANTS, 1).preempt == ()


def test_preemption_on_nodes_frees_one_node():
    cluster = ClusterState.from_nodes([NodeState("n0", 64, 8, 60, 0), NodeState("n1", 64, 8, 60, 0)])
    running = [run("l0", priority="low", gpus=8, started=1, placement=(("n0", 1),)),
               run("l1", priority="low", gpus=8, started=2, placement=(("n1", 1),))]
    d = decide([job("h", "x", gpus=8, priority="high", at=3)], running, cluster, PREEMPT, 3)
    assert d.preempt == ("l1",)


# -- determinism and baselines ----------------------------------------------------------------


def test_decision_does_not_depend_on_input_order():
    rng = random.Random(3)
    queued = [job(f"j{i}", rng.choice("abc"), workers=rng.choice([1, 2]), gpus=rng.choice([1, 2, 4]),
                  priority=rng.choice(["low", "normal"]), at=rng.random() * 7200) for i in range(40)]
    cluster = nodes(8, 5, 3, 8)
    first = decide(queued, [], cluster, TENANTS, 7200)
    for _ in range(5):
        rng.shuffle(queued)
        again = decide(queued, [], cluster, TENANTS, 7200)
        assert again.start == first.start and dict(again.placements) == dict(first.placements)


def test_fifo_and_sjf_order_and_block_at_the_head():
    quota_free = load_tenants("tenants: {default: {weight: 1}}")
    queued = [job("a", "x", gpus=2, at=0, est=300), job("b", "x", gpus=4, at=1, est=100),
              job("c", "y", gpus=1, at=2, est=10)]
    assert fifo(queued, [], pool(4, free_gpus=3), quota_free, 5).start == ("a",)  # b blocks c
    assert sjf(queued, [], pool(4, free_gpus=4), quota_free, 5).start == ("c",)  # b (next) blocks a
    assert sjf(queued, [], pool(8), quota_free, 5).start == ("c", "b", "a")
    assert set(POLICIES) == {"lorafarm", "fifo", "sjf"}


# -- property test ----------------------------------------------------------------------------


def _random_tenants(rng: random.Random):
    lines = ["priority_classes: {low: 0, normal: 100, high: 1000}",
             f"policy: {{aging_per_hour: {rng.choice([0, 50, 100])}, backfill: {rng.choice(['true', 'false'])}}}",
             "tenants:", "  default: {weight: 1, quota: {gpus: 16, workers: 6}}"]
    for t in "pqrs":
        lines.append(f"  {t}: {{weight: {rng.choice([1, 2, 3])}, quota: {{gpus: {rng.choice([4, 8, 12])}, "
                     f"workers: {rng.choice([3, 4, 8])}}}}}")
    return load_tenants("\n".join(lines))


@pytest.mark.parametrize("seed", range(24))
def test_random_workloads_keep_every_invariant(seed):
    """Drive ``decide`` through random workloads with jobs finishing: quotas hold at every start,
    gangs are whole and fit their nodes, and every admissible job starts."""
    rng = random.Random(seed)
    tenants = _random_tenants(rng)
    per_node = rng.choice([None, (4, 8.0), (3, 4.0)])
    caps = [(f"n{i}", 32.0, per_node[1]) for i in range(per_node[0])] if per_node else None
    total_gpus = sum(c[2] for c in caps) if caps else 12.0
    total_cpus = sum(c[1] for c in caps) if caps else 96.0
    free_node = {name: [cpus, gpus] for name, cpus, gpus in caps} if caps else None
    arrivals = sorted(
        (rng.uniform(0, 4 * HOUR), job(f"j{i:03d}", rng.choice("pqrsx"), workers=rng.choice([1, 1, 2, 3]),
                                       gpus=rng.choice([0.5, 1, 2, 4]), cpus=rng.choice([1, 2]),
                                       priority=rng.choice(["low", "normal", "normal", "high"])))
        for i in range(60))
    capacity = (ClusterState.from_nodes([NodeState(n, c, g, c, g) for n, c, g in caps]) if caps
                else {"cpus": total_cpus, "gpus": total_gpus})
    queued: dict[str, JobRequest] = {}
    running: dict[str, tuple[RunningJob, float]] = {}
    started: set[str] = set()
    expected: set[str] = set()
    t, i = 0.0, 0
    free = [total_cpus, total_gpus]
    for _ in range(5000):
        if i >= len(arrivals) and not queued and not running:
            break
        # next event: an arrival or a finish
        upcoming = ([arrivals[i][0]] if i < len(arrivals) else []) + [end for _, end in running.values()]
        t = max(t, min(upcoming))
        while i < len(arrivals) and arrivals[i][0] <= t:
            a = arrivals[i][1]
            a = JobRequest(a.job_id, a.tenant, a.workers, a.cpus_per_worker, a.gpus_per_worker, a.priority,
                           arrivals[i][0])
            i += 1
            if check_admissible(a, tenants, capacity) is None:
                queued[a.job_id] = a
                expected.add(a.job_id)
        for k in [k for k, (_, end) in running.items() if end <= t]:
            r, _ = running.pop(k)
            free[0] += r.cpus
            free[1] += r.gpus
            for name, n in r.placement:
                free_node[name][0] += n * r.cpus_per_worker
                free_node[name][1] += n * r.gpus_per_worker
        if caps:
            cluster = ClusterState.from_nodes([NodeState(n, c, g, *free_node[n]) for n, c, g in caps])
        else:
            cluster = ClusterState(total_cpus, total_gpus, free[0], free[1])
        d = decide(list(queued.values()), [r for r, _ in running.values()], cluster, tenants, t)
        assert not d.never_fits  # refused at submit
        for job_id in d.start:
            j = queued.pop(job_id)
            placement = tuple(d.placements.get(job_id, ()))
            if caps:
                assert sum(n for _, n in placement) == j.workers, "a partial gang"
                for name, n in placement:
                    free_node[name][0] -= n * j.cpus_per_worker
                    free_node[name][1] -= n * j.gpus_per_worker
                    assert free_node[name][0] >= -1e-9 and free_node[name][1] >= -1e-9, "node overcommitted"
            free[0] -= j.cpus
            free[1] -= j.gpus
            assert free[0] >= -1e-9 and free[1] >= -1e-9, "cluster overcommitted"
            running[job_id] = (RunningJob(j.job_id, j.tenant, j.workers, j.cpus_per_worker, j.gpus_per_worker,
                                          j.priority, j.submitted_at, t, None, placement),
                               t + rng.uniform(60, 2 * HOUR))
            started.add(job_id)
            q = tenants.quota(j.tenant)
            mine = [r for r, _ in running.values() if r.tenant == j.tenant]
            assert q.gpus is None or sum(r.gpus for r in mine) <= q.gpus + 1e-9, "GPU quota exceeded"
            assert q.workers is None or sum(r.workers for r in mine) <= q.workers, "worker quota exceeded"
        if not running and queued and i >= len(arrivals):
            pytest.fail(f"idle cluster but {sorted(queued)} queued at t={t}: a job would starve")
    assert started == expected, "every admissible job eventually starts"
