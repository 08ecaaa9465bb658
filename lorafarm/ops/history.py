"""Reading a job's recorded history (``<store>/<tenant>/<job-id>/history.jsonl``; its schema is
in :mod:`lorafarm.worker.launch`). Works on the store alone: no scheduler, no Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import StorageError
from ..storage import MANIFEST, Store, exists, join, read_bytes

HISTORY_FILE = "history.jsonl"


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
