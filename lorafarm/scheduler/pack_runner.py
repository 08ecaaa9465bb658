"""One runner per co-trained pack: a Ray actor that drives ``run_pack`` for its members and
answers for each member as a job's own runner would — its events to the scheduler under its own
job id, its outcome as soon as it ends (a member that finishes early is SUCCEEDED while the
others train on), and a stop request of its own (cancel or preemption of that member only:
it checkpoints at the next step boundary and leaves the pack).

Named ``RUNNER_PREFIX + pack id`` so that a restarted scheduler finds and stops it."""

from __future__ import annotations

import threading
from typing import Any

import ray

from ..events import Done, Event, Preempted, RunOutcome, RunState
from ..spec import JobSpec


class MemberStop:
    """``stop_requested`` of one member, in the shape the pack recipe polls
    (``control.stop_requested.remote()``): it asks the pack's runner about that member."""

    def __init__(self, runner: Any, job_id: str):
        self.runner, self.job_id = runner, job_id

    def remote(self):
        return self.runner.member_stop_requested.remote(self.job_id)


class MemberControl:
    def __init__(self, runner: Any, job_id: str):
        self.stop_requested = MemberStop(runner, job_id)


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=80)
class PackRunner:
    def __init__(self, job_ids: list[str]) -> None:
        self._stop = {j: threading.Event() for j in job_ids}
        self._ended = {j: threading.Event() for j in job_ids}
        self._outcome: dict[str, RunOutcome] = {}
        self._lock = threading.Lock()

    def run(self, members: list[tuple[str, JobSpec]], store_root: str, scheduler_handle, placement=()) -> None:
        """Train the members as one pack; each member's outcome is kept for :meth:`outcome`.
        Never raises: a failure of the whole pack is every unfinished member's failure."""
        from ..cotrain.compat import PACK_FAILED
        from ..cotrain.launch import run_pack
        from ..errors import JobFailed
        from ..storage import Store

        store = Store.open(store_root)
        me = ray.get_runtime_context().current_actor
        ids = [j for j, _ in members]

        def on_progress(job_id: str, event: Event) -> None:
            if isinstance(event, Done):  # it published: SUCCEEDED now, whatever the others do
                spec = dict(members)[job_id]
                self._end(job_id, RunOutcome(RunState.SUCCEEDED, adapter_uri=store.adapter_uri(spec.tenant, job_id),
                                             metrics=event.manifest.get("metrics", {}), manifest=event.manifest))
                return
            if isinstance(event, Preempted):
                self._end(job_id, RunOutcome(RunState.PREEMPTED, step=event.step))
            scheduler_handle.report.remote(job_id, event)

        try:
            results = run_pack([s for _, s in members], store, job_ids=ids, on_progress=on_progress,
                               controls={j: MemberControl(me, j) for j in ids})
        except Exception as e:  # noqa: BLE001 - any failure ends these jobs only
            results = {j: RunOutcome.failed(f"{PACK_FAILED}{type(e).__name__}: {e}") for j in ids}
        for job_id, result in results.items():
            self._end(job_id, RunOutcome.failed(result.reason) if isinstance(result, JobFailed) else result)

    def _end(self, job_id: str, outcome: RunOutcome) -> None:
        with self._lock:
            if job_id in self._outcome:
                return  # the first word stands (a Done, then the pack's own summary)
            self._outcome[job_id] = outcome
        self._ended[job_id].set()

    def outcome(self, job_id: str) -> RunOutcome:
        """Blocks until the member has ended; how it ended."""
        self._ended[job_id].wait()
        return self._outcome[job_id]

    def stop_member(self, job_id: str) -> None:
        """Ask this member to checkpoint at the end of its current step and leave the pack."""
        self._stop[job_id].set()

    def member_stop_requested(self, job_id: str) -> bool:
        return self._stop[job_id].is_set()

    def ping(self) -> bool:
        return True
