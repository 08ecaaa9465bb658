"""Fakes for the seams :class:`~lorafarm.scheduler.core.SchedulerCore` is handed, so tests drive
the real core with no Ray: a clock that moves only when told, a launcher whose runs end when the
test says, and a cluster of fixed size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from lorafarm.events import RunOutcome
from lorafarm.policy import ClusterState, RunningJob
from lorafarm.scheduler.core import SchedulerCore
from lorafarm.scheduler.seams import cluster_state
from lorafarm.spec import JobSpec, load_tenants
from lorafarm.storage import Store

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.t = now

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeLauncher:
    """Records what the core asks; a run ends when the test calls :meth:`end`."""

    def __init__(self) -> None:
        self.started: list[str] = []  # job ids, in start order
        self.packs: list[tuple[str, list[str]]] = []  # (pack id, member job ids), in start order
        self.specs: dict[str, JobSpec] = {}
        self.running: set[str] = set()
        self.outcomes: dict[str, RunOutcome] = {}
        self.preempted: list[str] = []
        self.killed: list[str] = []
        self.leftovers_killed: list[str] = []
        self.released: list[str] = []  # placement group ids

    def start(self, job_id: str, spec: JobSpec, store_root: str) -> None:
        self.started.append(job_id)
        self.specs[job_id] = spec
        self.running.add(job_id)

    def start_pack(self, pack_id: str, members: list[tuple[str, JobSpec]], store_root: str) -> None:
        self.packs.append((pack_id, [j for j, _ in members]))
        for job_id, spec in members:
            self.specs[job_id] = spec
            self.running.add(job_id)

    def end(self, job_id: str, outcome: RunOutcome) -> None:
        self.outcomes[job_id] = outcome

    def poll(self, job_id: str) -> RunOutcome | None:
        outcome = self.outcomes.pop(job_id, None)
        if outcome is not None:
            self.running.discard(job_id)
        return outcome

    def preempt(self, job_id: str) -> None:
        self.preempted.append(job_id)

    def kill(self, job_id: str) -> bool:
        self.killed.append(job_id)
        was = job_id in self.running
        self.running.discard(job_id)
        return was

    def kill_leftover(self, job_id: str) -> None:
        self.leftovers_killed.append(job_id)

    def release(self, placement_groups: list[str]) -> None:
        self.released.extend(placement_groups)

    def sweep(self) -> int:
        return 0


class FakeCapacity:
    def __init__(self, cpus: float = 4.0, gpus: float = 0.0):
        self.cpus, self.gpus = cpus, gpus

    def cluster(self, running: Sequence[RunningJob]) -> ClusterState:
        return cluster_state(self.cpus, self.gpus, running)


def spec(tenant: str = "demo", name: str = "job", workers: int = 1, cpus: float = 1.0, **top) -> dict:
    """The quickstart spec for ``tenant``, as a dict the way `lorafarm submit` sends it."""
    s = yaml.safe_load((ROOT / "jobs/quickstart.yaml").read_text())
    s.update(tenant=tenant, name=name, **top)
    s["resources"].update(workers=workers, cpus_per_worker=cpus)
    return s


class CheckedCore(SchedulerCore):
    """A SchedulerCore that checks after every tick, submit, cancel and report that its job index
    (queue, running set, counts) is what a scan of every record says: a transition the index
    missed fails the test that made it."""

    def _check(self) -> None:
        problems = self.index.problems(self.jobs.values())
        assert not problems, problems

    def tick(self) -> None:
        super().tick()
        self._check()

    def submit(self, *a, **kw):
        out = super().submit(*a, **kw)
        self._check()
        return out

    def cancel(self, *a, **kw):
        out = super().cancel(*a, **kw)
        self._check()
        return out

    def report(self, *a, **kw) -> None:
        super().report(*a, **kw)
        self._check()


def make_core(store: str | Path, tenants_text: str | None = None, clock: FakeClock | None = None,
              launcher: FakeLauncher | None = None, capacity: FakeCapacity | None = None,
              hang_timeout_s: float = 1800.0) -> SchedulerCore:
    return CheckedCore(Store.open(str(store)), load_tenants(tenants_text), clock or FakeClock(),
                         launcher or FakeLauncher(), capacity or FakeCapacity(), hang_timeout_s=hang_timeout_s)
