"""Local paths in a spec are relative to where the user stands; the scheduler and workers run
elsewhere, so the client makes them absolute before sending the spec."""

from __future__ import annotations

from pathlib import Path

from ..spec import JobSpec
from ..storage import is_remote


def _absolute(value: str, spec_file: str | Path) -> str:
    if is_remote(value) or value.startswith("file://"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    here = Path.cwd() / p
    beside = Path(spec_file).resolve().parent / p
    if any(ch in value for ch in "*?["):
        return str(here)
    return str((here if here.exists() or not beside.exists() else beside).resolve())


def absolutize_local_paths(spec: JobSpec, spec_file: str | Path) -> JobSpec:
    d = spec.dataset
    updates = {"uri": _absolute(d.uri, spec_file)}
    if d.eval_uri:
        updates["eval_uri"] = _absolute(d.eval_uri, spec_file)
    new = spec.model_copy(update={"dataset": d.model_copy(update=updates)})
    base = spec.base_model
    if base.startswith((".", "/", "~")) or Path(base).exists():
        new = new.model_copy(update={"base_model": _absolute(base, spec_file)})
    return new
