"""What each event a runner reports does to its job: the record, the job's log and the metrics.
Written once, here; the core only routes events to :func:`apply_event`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..events import (
    CheckpointSaved,
    DataReady,
    Event,
    GroupStarted,
    Phase,
    Preempted,
    Resumed,
    Step,
    WorkerError,
)
from ..metrics import Metrics
from .state import EventKind, JobRecord

PROGRESS_FIELDS = ("step", "total_steps", "loss", "lr", "tokens_per_s", "step_time_s", "tokens_seen", "eval_loss",
                   "gpu_memory_bytes", "mfu")


@dataclass(slots=True)
class LiveRun:
    """What the scheduler tracks about a job's current run (not persisted: a run does not
    survive its scheduler)."""

    last_progress: float  # clock time of the last event (or the start): the hang timeout's base
    tokens_reported: float = 0.0  # tokens_seen of the last step, so the counter gets deltas
    group_starts: int = 0  # worker-group starts in this run (more than one: restarted after a failure)
    preempting: bool = False  # asked to checkpoint and stop, not stopped yet
    growing: bool = False  # that stop is for a shrunk elastic job to restart larger
    regrouping: bool = False  # that stop is for its pack to start again with new members


def data_line(stats: dict) -> str:
    """The data stats as one log line: the counts that are not zero (examples always), never the
    lists of rows or problems behind them (``status``/``events`` carry those)."""
    counts = [(k, v) for k, v in stats.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and (v or k == "examples")]
    return "data: " + (", ".join(f"{v if isinstance(v, int) else f'{v:g}'} {k}" for k, v in counts) or "ready")


def apply_event(event: Event, record: JobRecord, run: LiveRun, metrics: Metrics, log: Callable[[str], None],
                now: float) -> bool:
    """Apply ``event`` from ``record``'s runner. True when the record changed in a way a
    restarted scheduler must find (save it now), e.g. a new placement group."""
    tenant, job_id = record.tenant, record.job_id
    match event:
        case Step():
            fields = event.record()
            delta = event.tokens_seen - run.tokens_reported
            run.tokens_reported = float(event.tokens_seen)
            metrics.step(tenant, job_id, fields, delta if delta > 0 else event.tokens_seen)
            record.progress = {k: fields[k] for k in PROGRESS_FIELDS if k in fields}
            log(f"step {event.step}/{event.total_steps} loss {event.loss:.4f} {event.tokens_per_s:.0f} tok/s"
                + (f" eval {event.eval_loss:.4f}" if event.eval_loss is not None else ""))
        case Phase():
            log(event.phase)
        case DataReady():
            log(data_line(event.stats) + (" (cache hit)" if event.cache_hit else ""))
            for warning in event.stats.get("warnings") or ():
                log(f"warning: {warning}")
        case WorkerError():
            retry = " — Ray Train restarts the workers from the latest checkpoint" if event.retryable else ""
            record.note(now, EventKind.FAILURE, event.reason + retry)
            log(f"worker error: {event.reason}{retry}")
            if event.retryable:
                metrics.worker_failures.labels(tenant).inc()
        case GroupStarted():
            run.group_starts += 1
            if event.placement_group:
                record.placement_groups.append(event.placement_group)
            if event.nodes:  # where the ranks really run: the scheduler's accounting follows it
                record.worker_nodes = [{"rank": i, "node_id": n, "ip": ip} for i, (n, ip) in enumerate(event.nodes)]
                counts: dict[str, int] = {}
                for n, _ in event.nodes:
                    counts[n] = counts.get(n, 0) + 1
                record.placement = sorted(counts.items())
                where = ", ".join(f"{ip} ({n[:12]}) ×{counts[n]}" for n, ip in dict(event.nodes).items())
                record.note(now, EventKind.PLACED, f"{event.world_size} worker(s) on node(s) {where}",
                            {"nodes": record.worker_nodes})
                log(f"workers on {where}")
            if run.group_starts > 1:
                record.note(now, EventKind.FAILURE, f"worker group restarted after a failure (start "
                            f"{run.group_starts} of this run, {event.world_size} workers)")
            return True  # a new scheduler must find the placement groups
        case Resumed():
            record.note(now, EventKind.RESUMED, f"resumed from checkpoint step {event.step} on "
                        f"{event.world_size} worker(s)", {"step": event.step})
            log(f"resumed from checkpoint step {event.step}")
        case CheckpointSaved():
            record.last_checkpoint_step = event.step
            metrics.checkpoint_seconds.labels(tenant).observe(event.seconds)
            metrics.checkpoint_bytes.labels(tenant).inc(event.bytes)
            log(f"checkpoint at step {event.step} ({event.bytes} bytes, {event.seconds:.2f} s)")
        case Preempted():
            log(f"preempted after step {event.step}: checkpoint saved")
    return False
