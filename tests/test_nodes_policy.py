"""Node-aware admission and node loss without Ray: the pure pieces (Ray's node rows to
NodeStates, pack/spread placement, accelerator types, refusals naming the largest node and the
field) and the real SchedulerCore driven with a per-node fake cluster whose nodes come and go."""

from __future__ import annotations

import pytest
from scheduler_fakes import FakeClock, FakeLauncher, make_core, spec

from lorafarm.errors import SpecError
from lorafarm.events import GroupStarted, RunOutcome, RunState
from lorafarm.policy import ClusterState, JobRequest, NodeState, RunningJob, check_admissible
from lorafarm.policy.pool import Pool, largest_fit
from lorafarm.scheduler.elastic import NodeFollower
from lorafarm.scheduler.nodes import held_by_node, node_states
from lorafarm.spec import load_tenants, validate_spec


def _node(name: str, cpus: float = 2, gpus: float = 0, free: float | None = None, accel: str | None = None):
    return NodeState(name, cpus, gpus, cpus if free is None else free, gpus, accelerator_type=accel)


def _job(workers: int, cpus: float, gpus: float = 0.0, **kw) -> JobRequest:
    return JobRequest("j", "demo", workers, cpus, gpus, "normal", 0.0, **kw)


# ------------------------------------------------------------------ Ray's state -> NodeState
def test_node_states_from_ray_rows_take_the_smaller_free_view_and_skip_dead_nodes():
    rows = [
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.1",
         "Resources": {"CPU": 8.0, "GPU": 2.0, "memory": 1e9, "accelerator_type:H100": 1.0, "node:10.0.0.1": 1.0,
                       "node:__internal_head__": 1.0, "big_disk": 1.0}},
        {"NodeID": "b", "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 4.0}},
        {"NodeID": "c", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 64.0}},
    ]
    available = {"a": {"CPU": 7.0, "GPU": 2.0}, "b": {"CPU": 1.0}}
    held = {"a": (4.0, 1.0), "b": (1.0, 0.0)}
    a, b = node_states(rows, available, held, reserve_cpus=1.0)
    assert (a.name, a.ip, a.total_cpus, a.total_gpus, a.accelerator_type) == ("a", "10.0.0.1", 7.0, 2.0, "H100")
    assert a.free_cpus == 3.0 and a.free_gpus == 1.0  # totals less what our jobs hold, below Ray's view
    assert a.custom == {"big_disk": 1.0} and a.memory_bytes == 1e9
    assert b.total_cpus == 4.0 and b.free_cpus == 1.0  # Ray's view is smaller: something else holds 2
    running = [RunningJob("x", "demo", 3, 1.0, 0.0, "normal", 0.0, 0.0, placement=(("a", 2), ("b", 1)))]
    assert held_by_node(running) == {"a": (2.0, 0.0), "b": (1.0, 0.0)}


# ------------------------------------------------------------------ placement
def test_pack_fills_fewest_nodes_and_spread_deals_one_per_node():
    cluster = ClusterState.from_nodes([_node("a", 4), _node("b", 4), _node("c", 4, free=2)])
    assert Pool(cluster).place(2, 1, 0) == (("c", 2),)  # the fullest node that holds them
    assert Pool(cluster).place(3, 1, 0, spread=True) == (("a", 1), ("b", 1), ("c", 1))
    assert dict(Pool(cluster).place(5, 1, 0, spread=True)) == {"a": 2, "b": 2, "c": 1}
    assert Pool(cluster).place(6, 2, 0) is None  # 2 + 2 + 1 workers of 2 CPUs: 5 at most


def test_a_gang_never_fits_fragmented_free_cpus():
    cluster = ClusterState.from_nodes([_node("a", 2, free=1), _node("b", 2, free=1)])
    assert cluster.free_cpus == 2
    assert Pool(cluster).place(1, 2, 0) is None  # two free CPUs in total, but one per node


def test_accelerator_type_limits_the_nodes():
    cluster = ClusterState.from_nodes([_node("a", 8, 8, accel="A100"), _node("b", 8, 8, accel="H100")])
    assert Pool(cluster).place_job(_job(2, 1, 1, accelerator_type="H100")) == (("b", 2),)
    assert Pool(cluster).place_job(_job(9, 1, 1, accelerator_type="H100")) is None
    reason = check_admissible(_job(1, 1, 1, accelerator_type="TPU"), load_tenants(None), cluster)
    assert "resources.accelerator_type" in reason and "A100, H100" in reason


def test_largest_fit_shrinks_within_the_range_and_keeps_the_batch():
    pool = Pool(ClusterState.from_nodes([_node("a", 2), _node("b", 2, free=0)]))
    assert largest_fit(pool, 1, 2, 2, 0) == (1, (("a", 1),))
    assert largest_fit(pool, 2, 2, 2, 0) is None
    pool = Pool(ClusterState.from_nodes([_node("a", 6)]))
    assert largest_fit(pool, 1, 4, 2, 0, allowed=lambda k: 8 % k == 0) == (2, (("a", 2),))  # 3 fits, keeps no batch


# ------------------------------------------------------------------ refusals
def test_refusals_name_the_largest_node_shape_and_the_field():
    tenants = load_tenants(None)
    nodes = ClusterState.from_nodes([_node("a", 2), _node("b", 2)])
    reason = check_admissible(_job(1, 3), tenants, nodes)
    assert "resources.cpus_per_worker" in reason and "largest: 2 CPUs, 0 GPUs" in reason
    reason = check_admissible(_job(3, 2), tenants, nodes)
    assert "resources.workers" in reason and "at most 2 fit" in reason and "largest: 2 CPUs" in reason
    gpus = ClusterState.from_nodes([_node("g", 16, 4)])
    assert "resources.gpus_per_worker" in check_admissible(_job(1, 1, 8), tenants, gpus)
    assert check_admissible(_job(2, 2), tenants, nodes) is None


def test_spec_min_workers_placement_and_accelerator_are_validated():
    raw = spec(workers=2)
    raw["resources"].update(min_workers=1, placement="spread", accelerator_type="H100")
    r = validate_spec(raw).resources
    assert (r.min_workers, r.placement, r.accelerator_type, r.least_workers) == (1, "spread", "H100", 1)
    assert validate_spec(spec(workers=2)).resources.least_workers == 2  # default: rigid
    for field, value, words in (("min_workers", 3, "resources.min_workers: 3 is more than resources.workers"),
                                ("placement", "scatter", "resources.placement"),
                                ("min_workers", 0, "resources.min_workers")):
        bad = spec(workers=2)
        bad["resources"][field] = value
        with pytest.raises(SpecError) as e:
            validate_spec(bad)
        assert words in " ".join(e.value.problems)
    odd = spec(workers=4)  # global batch 16, micro batch 4 (quickstart): 3 workers could not keep it
    odd["training"].update(global_batch_size=16, micro_batch_size=2)
    odd["resources"]["min_workers"] = 3
    with pytest.raises(SpecError) as e:
        validate_spec(odd)
    assert "divisible" in e.value.problems[0] and "min_workers" in e.value.problems[0]


def test_node_follower_tells_joins_and_losses():
    f = NodeFollower()
    assert f.update([_node("a"), _node("b")]) == ([], [])
    joined, lost = f.update([_node("a"), _node("c")])
    assert [n.name for n in joined] == ["c"] and [n.name for n in lost] == ["b"]


# ------------------------------------------------------------------ the core on a per-node fake cluster
class NodeCapacity:
    """Nodes the test adds and removes; free = totals less the running jobs' placements."""

    def __init__(self, *nodes: NodeState):
        self.nodes = {n.name: n for n in nodes}

    def cluster(self, running):
        held = held_by_node(running)
        return ClusterState.from_nodes([
            NodeState(n.name, n.total_cpus, n.total_gpus, n.total_cpus - held.get(n.name, (0, 0))[0],
                      n.total_gpus - held.get(n.name, (0, 0))[1]) for n in self.nodes.values()])

    def unreachable(self, node_ids):
        return {n for n in node_ids if n not in self.nodes}


class PlacingLauncher(FakeLauncher):
    def __init__(self):
        super().__init__()
        self.placements: dict[str, list] = {}

    def start(self, job_id, spec, store_root, placement=()):
        super().start(job_id, spec, store_root)
        self.placements.setdefault(job_id, []).append(tuple(placement))


def _core(tmp_path, *nodes):
    clock, launcher, capacity = FakeClock(), PlacingLauncher(), NodeCapacity(*nodes)
    return make_core(tmp_path / "store", None, clock, launcher, capacity), clock, launcher, capacity


def _submit(core, workers, cpus, name="job", **resources):
    raw = spec(name=name, workers=workers, cpus=cpus)
    raw["training"].update(global_batch_size=4, micro_batch_size=2)
    raw["resources"].update(resources)
    return core.submit(raw)["job_id"]


def _kinds(core, job):
    return [e["kind"] for e in core.events(job)]


def test_submit_refuses_a_worker_larger_than_every_node(tmp_path):
    core, *_ = _core(tmp_path, _node("a"), _node("b"))
    with pytest.raises(SpecError) as e:
        _submit(core, 1, 3)
    assert "largest: 2 CPUs, 0 GPUs" in e.value.problems[0] and "resources.cpus_per_worker" in e.value.problems[0]
    assert core.list() == []


def test_fits_later_stays_queued_and_starts_on_the_node_that_frees(tmp_path):
    core, clock, launcher, _ = _core(tmp_path, _node("a"), _node("b"))
    a = _submit(core, 1, 1, "a", placement="spread")
    b = _submit(core, 1, 1, "b", placement="spread")
    core.tick()
    assert {launcher.placements[a][0], launcher.placements[b][0]} == {(("a", 1),), (("b", 1),)}
    big = _submit(core, 1, 2, "big")
    for _ in range(3):
        core.tick()
    assert core.status(big)["state"] == "QUEUED"  # 2 CPUs free in total, but 1 per node
    launcher.end(a, RunOutcome(RunState.SUCCEEDED, adapter_uri="file:///x"))
    core.tick()
    assert core.status(big)["state"] == "RUNNING" and launcher.placements[big] == [launcher.placements[a][0]]


def test_workers_report_their_nodes_into_status_and_accounting(tmp_path):
    core, _, launcher, _ = _core(tmp_path, _node("a", 4), _node("b", 4))
    job = _submit(core, 2, 2, "j")
    core.tick()
    assert launcher.placements[job] == [(("a", 2),)]  # pack: one node
    core.report(job, GroupStarted(world_size=2, nodes=(("b", "10.0.0.2"), ("b", "10.0.0.2"))))
    s = core.status(job)
    assert [n["node_id"] for n in s["nodes"]] == ["b", "b"] and s["nodes"][0]["ip"] == "10.0.0.2"
    assert core.jobs[job].placement == [("b", 2)] and "placed" in _kinds(core, job)


def test_node_loss_shrinks_an_elastic_job_then_it_grows_back(tmp_path):
    core, _, launcher, capacity = _core(tmp_path, _node("a"), _node("b"))
    job = _submit(core, 2, 2, "el", min_workers=1)
    core.tick()
    assert dict(launcher.placements[job][0]) == {"a": 1, "b": 1}
    core.jobs[job].last_checkpoint_step = 4
    lost = capacity.nodes.pop("b")
    core.tick()
    s = core.status(job)
    assert s["state"] == "RUNNING" and s["run_workers"] == 1 and launcher.specs[job].resources.workers == 1
    resized = [e for e in core.events(job) if e["kind"] == "resized"]
    assert resized[0]["data"] == {"from": 2, "to": 1, "step": 4} and "node_lost" in _kinds(core, job)
    assert launcher.placements[job][-1] == (("a", 1),) and job in launcher.killed
    # what it holds now is what the tenant is shown, charged and quota-checked for: 1 worker, not 2
    (row,) = [r for r in core.tenants_usage() if r["tenant"] == "demo"]
    assert row["usage"]["workers"] == 1
    core.tick()
    assert core.metrics.usage.labels("demo", "workers")._value.get() == 1
    capacity.nodes["b"] = lost  # capacity returns: checkpoint, then restart on 2
    core.tick()
    assert launcher.preempted == [job]
    launcher.end(job, RunOutcome(RunState.PREEMPTED, step=6))
    core.tick()
    s = core.status(job)
    assert s["state"] == "RUNNING" and s["run_workers"] == 2 and launcher.specs[job].resources.workers == 2
    assert [e["data"] for e in core.events(job) if e["kind"] == "resized"][-1] == {"from": 1, "to": 2, "step": 6}
    assert core.metrics.resizes.labels("demo")._value.get() == 2


def test_node_loss_requeues_a_rigid_job_that_no_longer_fits_and_it_resumes_on_return(tmp_path):
    core, _, launcher, capacity = _core(tmp_path, _node("a"), _node("b"))
    job = _submit(core, 2, 2, "rigid")
    core.tick()
    lost = capacity.nodes.pop("b")
    # the run failing first (a peer died) is a node loss too, not a job failure
    launcher.end(job, RunOutcome.failed("RuntimeError: Connection reset by peer"))
    core.tick()
    s = core.status(job)
    assert s["state"] == "QUEUED" and s["reason"] is None and "node_lost" in _kinds(core, job)
    assert "resized" not in _kinds(core, job)
    core.tick()
    assert core.status(job)["state"] == "QUEUED"
    capacity.nodes["b"] = lost
    core.tick()
    assert core.status(job)["state"] == "RUNNING" and len(launcher.started) == 2


def test_a_head_blocked_by_capacity_asks_the_autoscaler_and_clears_on_admit_and_cancel(tmp_path):
    from lorafarm.scheduler.autoscale import AutoscaleRequests

    core, _, launcher, capacity = _core(tmp_path, _node("a"))
    asked: list[list] = []
    core.autoscaler = AutoscaleRequests(True, asked.append)
    big = _submit(core, 2, 2, "big")  # fits no node now, but the cluster can grow: queued, not refused
    core.tick()
    core.tick()
    assert asked == [[{"CPU": 2.0}, {"CPU": 2.0}]]  # asked once
    waiting = [e for e in core.events(big) if e["kind"] == "waiting_for_nodes"]
    assert len(waiting) == 1 and "waiting for nodes" in waiting[0]["message"]
    capacity.nodes["b"] = _node("b")  # the autoscaler added a node
    core.tick()
    assert core.status(big)["state"] == "RUNNING" and asked[-1] == []  # cleared once admitted
    other = _submit(core, 2, 2, "other")
    core.tick()
    assert asked[-1] == [{"CPU": 2.0}, {"CPU": 2.0}]
    core.cancel(other)
    assert asked[-1] == []
    core.autoscaler = AutoscaleRequests(False, asked.append)
    with pytest.raises(SpecError):
        _submit(core, 1, 3, "too-big")  # autoscaling off: refused by node shape


def test_the_failure_simulator_shrinks_elastic_jobs_and_requeues_rigid_ones():
    from lorafarm.sim.failures import FailureModel, make_trace, simulate

    model = FailureModel(nodes=4, gpus_per_node=8, node_mtbf_s=6 * 3600, repair_s=2 * 3600)
    rigid = simulate(make_trace(40, 3, model, 1.2, elastic=False), model, seed=3)
    elastic = simulate(make_trace(40, 3, model, 1.2, elastic=True), model, seed=3)
    assert rigid["finished"] == elastic["finished"] == 40 and rigid["node_failures"] > 5
    assert rigid["resizes"] == 0 and elastic["resizes"] > 0
    assert elastic["recovery_p95_min"] <= rigid["recovery_p95_min"]
