"""A job's recorded history, ``<store>/<tenant>/<job-id>/history.jsonl``: its schema, its
writer (the job's driver, :mod:`lorafarm.worker.launch`) and its reader (``lorafarm plot``).
Works on the store alone: no scheduler, no Ray, no torch.

One JSON object per optimizer step (:meth:`lorafarm.events.Step.record`), in step order,
rewritten every few seconds while the job trains and once more when it ends — succeeded or
failed; a cancelled job keeps what the last rewrite held. Keys:

- ``step`` (int, 1-based), ``total_steps`` (int), ``loss`` (float: token-mean train loss of the
  step's global batch), ``lr`` (float: the learning rate the step used), ``tokens_per_s`` (float:
  tokens of all ranks ÷ step time), ``step_time_s`` (float), ``tokens_seen`` (int, cumulative);
- ``eval_loss`` (float) on steps that evaluated (every ``training.eval_every_steps``, and the last
  step carries the final evaluation);
- ``skipped`` (true) on steps whose update was left out (a non-finite loss under
  ``training.on_nonfinite_loss: skip``);
- the first line also: ``trainable_params``, ``total_params``, ``optimizer_state_bytes``,
  ``optimizer_numel`` (ints);
- on GPU only: ``gpu_memory_bytes`` (peak allocated on rank 0) and ``mfu`` (model FLOPs
  utilisation, see :mod:`lorafarm.ops.accel`; absent for a device of unknown peak).

Readers ignore keys they do not know.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StorageError
from ..storage import MANIFEST, Store, exists, join, read_bytes, write_bytes

HISTORY_FILE = "history.jsonl"
FLUSH_EVERY_S = 5.0  # rewrite history.jsonl at most this often while a job trains


class HistoryWriter:
    """A job's ``history.jsonl``, built from rank 0's step records and rewritten whole (atomic
    on a local store, one PUT on S3) every few seconds. Never fails a job: it is a record for
    plots."""

    def __init__(self, job_uri: str):
        self.uri = join(job_uri, HISTORY_FILE)
        self.lines: list[dict[str, Any]] = []
        self.written = 0
        self.last_flush = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(record)
        self.flush_if_due()

    def finish(self, full: Iterable[dict[str, Any]], metrics: dict[str, Any]) -> None:
        """The worker's own list is complete (a streamed step may have been dropped); the final
        evaluation, made after the last step, goes on the last line."""
        full = [dict(r) for r in full]
        if len(full) >= len(self.lines):
            self.lines = full
            self.written = -1  # rewrite
        final_eval = metrics.get("final_eval_loss")
        if self.lines and final_eval is not None and "eval_loss" not in self.lines[-1]:
            self.lines[-1]["eval_loss"] = final_eval
            self.written = -1

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.lines or self.written == len(self.lines):
            return
        try:
            write_bytes(self.uri, "".join(json.dumps(r) + "\n" for r in self.lines).encode())
            self.written = len(self.lines)
        except Exception:  # noqa: BLE001 - the history is a record for plots, never a reason to fail a job
            pass


@dataclass
class JobHistory:
    job_id: str
    job_uri: str
    steps: list[dict[str, Any]]
    initial_eval_loss: float | None = None  # evaluated before the first step (from the manifest)
    metrics: dict[str, Any] = field(default_factory=dict)


def parse_history(text: str) -> list[dict[str, Any]]:
    """The step records of a history file, sorted by step; blank and broken lines (a write cut
    short) are skipped, as are records without ``step``."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            out.append(record)
    return sorted(out, key=lambda r: r["step"])


def load_job_history(job_id: str, store: str | None = None, tenant: str | None = None) -> JobHistory:
    """Find the job in the store (any tenant unless ``tenant`` is given) and read its history,
    plus the evaluation before training from the adapter's manifest when one was published."""
    job_uri = Store.open(store).find_job(job_id, tenant)
    uri = join(job_uri, HISTORY_FILE)
    if not exists(uri):
        raise StorageError(f"job {job_id!r} has no {HISTORY_FILE} at {job_uri} — it has not finished a "
                           "training step yet (or ran before history was recorded)")
    steps = parse_history(read_bytes(uri).decode("utf-8", errors="replace"))
    metrics: dict[str, Any] = {}
    try:
        manifest = json.loads(read_bytes(join(job_uri, "adapter", MANIFEST)))
        metrics = manifest.get("metrics") or {}
    except (StorageError, json.JSONDecodeError, UnicodeDecodeError):
        pass  # failed or cancelled jobs have no adapter
    return JobHistory(job_id=job_id, job_uri=job_uri, steps=steps,
                      initial_eval_loss=metrics.get("initial_eval_loss"), metrics=metrics)
