"""A rich progress bar fed by the job's progress events (step, loss, tokens/s, ETA; GPU memory and
MFU on GPU)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..events import CheckpointSaved, DataReady, Event, Phase, Resumed, Step, WorkerError


class JobProgress:
    """Context manager; call it with each :mod:`lorafarm.events` object. Quiet when ``enabled`` is false (``--json``)."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("eval {task.fields[eval]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("{task.fields[gpu]}"),  # GPU memory and MFU; empty on CPU
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        match event:
            case Phase():
                self.console.log(event.phase)
            case DataReady(stats=s):
                hit = " (tokenization cache hit)" if event.cache_hit else ""
                self.console.log(
                    f"data: {s.get('examples')} examples, {s.get('tokens')} tokens, {s.get('rows')} rows{hit}"
                )
            case Step():
                if self.task is None:
                    self.task = self.progress.add_task("train", total=event.total_steps, loss="-", eval="-",
                                                       tps="-", gpu="")
                fields = {"loss": f"{event.loss:.4f}", "tps": f"{event.tokens_per_s:,.0f}", "gpu": _gpu(event)}
                if event.eval_loss is not None:
                    fields["eval"] = f"{event.eval_loss:.4f}"
                self.progress.update(self.task, completed=event.step, **fields)
            case WorkerError():
                retry = " — restarting the workers from the latest checkpoint" if event.retryable else ""
                self.console.log(f"[red]worker error: {event.reason}{retry}")
            case CheckpointSaved():
                self.console.log(f"checkpoint at step {event.step} ({event.bytes:,} B, {event.seconds:.2f} s)")
            case Resumed():
                self.console.log(f"resumed from checkpoint step {event.step} on {event.world_size} worker(s)")
                if self.task is not None:
                    self.progress.update(self.task, completed=event.step)


def _gpu(step: Step) -> str:
    parts = []
    if step.gpu_memory_bytes is not None:
        parts.append(f"{step.gpu_memory_bytes / 2**30:.1f} GiB")
    if step.mfu is not None:
        parts.append(f"MFU {step.mfu:.0%}")
    return " ".join(parts)
