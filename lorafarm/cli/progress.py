"""A rich progress bar fed by the job's progress events (step, loss, tokens/s, ETA; GPU memory and
MFU on GPU)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class JobProgress:
    """Context manager; call it with each event. Quiet when ``enabled`` is false (``--json``)."""

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

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("kind")
        if kind == "phase":
            self.console.log(event["phase"])
        elif kind == "data":
            s = event["stats"]
            hit = " (tokenization cache hit)" if event.get("cache_hit") else ""
            self.console.log(
                f"data: {s.get('examples')} examples, {s.get('tokens')} tokens, {s.get('rows')} rows{hit}"
            )
        elif kind == "step":
            if self.task is None:
                self.task = self.progress.add_task("train", total=event["total_steps"], loss="-", eval="-", tps="-",
                                                   gpu="")
            fields = {"loss": f"{event['loss']:.4f}", "tps": f"{event['tokens_per_s']:,.0f}", "gpu": _gpu(event)}
            if "eval_loss" in event:
                fields["eval"] = f"{event['eval_loss']:.4f}"
            self.progress.update(self.task, completed=event["step"], **fields)
        elif kind == "error":
            retry = " — restarting the workers from the latest checkpoint" if event.get("retryable") else ""
            self.console.log(f"[red]worker error: {event['reason']}{retry}")
        elif kind == "checkpoint":
            self.console.log(f"checkpoint at step {event['step']} ({event['bytes']:,} B, {event['seconds']:.2f} s)")
        elif kind == "resumed":
            self.console.log(f"resumed from checkpoint step {event['step']} on {event.get('world_size')} worker(s)")
            if self.task is not None:
                self.progress.update(self.task, completed=event["step"])


def _gpu(event: dict[str, Any]) -> str:
    parts = []
    if event.get("gpu_memory_bytes") is not None:
        parts.append(f"{event['gpu_memory_bytes'] / 2**30:.1f} GiB")
    if event.get("mfu") is not None:
        parts.append(f"MFU {event['mfu']:.0%}")
    return " ".join(parts)
