"""One runner per running job: a Ray actor that drives the core's training (``run_job``) and
streams its progress to the scheduler. It owns the job's Ray Train controller, so killing it
(cancel) stops training; the scheduler then removes the job's placement groups, which the
workers report (see :func:`remove_placement_groups`), so their resources free at once.

It is threaded (``max_concurrency``): ``preempt()`` and the workers' ``stop_requested()`` polls
are answered while ``run()`` trains."""

from __future__ import annotations

import threading

import ray

from ..events import Done, Event, RunOutcome
from ..spec import JobSpec


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4)
class Runner:
    def __init__(self) -> None:
        self._stop = threading.Event()

    def run(self, spec: JobSpec, store_root: str, job_id: str, scheduler_handle, placement=()) -> RunOutcome:
        """Train ``spec`` as job ``job_id``, reporting each event to the scheduler as it comes
        (``scheduler_handle.report.remote(job_id, event)``); how the run ended. Never raises."""
        from ..errors import JobFailed
        from ..storage import Store
        from ..worker.launch import run_job

        def on_progress(event: Event) -> None:
            if not isinstance(event, Done):  # the manifest travels in the outcome
                scheduler_handle.report.remote(job_id, event)

        me = ray.get_runtime_context().current_actor
        try:
            return run_job(spec, Store.open(store_root), job_id=job_id, on_progress=on_progress, control=me,
                           placement=tuple(placement))
        except JobFailed as e:
            return RunOutcome.failed(e.reason)
        except Exception as e:  # noqa: BLE001 - any failure ends this job only
            return RunOutcome.failed(f"{type(e).__name__}: {e}")

    def preempt(self) -> None:
        """Ask the workers to checkpoint at the end of their current step and stop."""
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def ping(self) -> bool:
        return True


def orphaned_placement_groups(job_id_hex: str) -> list[str]:
    """The live placement groups that actors of job ``job_id_hex`` created and that outlived
    their creator. Ray keeps a non-detached group until its creator actor *and* its job are
    gone, and Ray Train hands a group to its own cleaner only once the workers have started: a
    runner stopped in between (cancel, hang, node loss) leaves its controller's group holding
    the gang's resources for as long as the scheduler's job lives."""
    from ray._private.state import state
    from ray._raylet import ActorID
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    out = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = PlacementGroupTableData.FromString(raw)
        by_actor = len(pg.creator_actor_id) == ActorID.size() and not ActorID(pg.creator_actor_id).is_nil()
        if (by_actor and pg.creator_actor_dead and pg.creator_job_id.hex() == job_id_hex and not pg.is_detached
                and pg.state != PlacementGroupTableData.REMOVED):
            out.append(pg.placement_group_id.hex())
    return out


def remove_placement_groups(hex_ids: list[str]) -> int:
    """Remove placement groups by id (their actors die with them); unknown or already removed
    ones are skipped. Returns how many were removed."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for hex_id in hex_ids:
        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id))))
            removed += 1
        except Exception:  # noqa: BLE001 - gone already
            pass
    return removed
