"""Job traces: lorafarm's own CSV/Parquet format and readers for public cluster traces.

lorafarm trace format (CSV with a header, or Parquet with the same columns)::

    submit_time      float   seconds from any origin (the trace is shifted to start at 0)
    tenant           str     tenant name (matched against the tenants file)
    job_id           str     unique id
    gpus_per_worker  float   GPUs each worker needs (0 for CPU-only jobs)
    workers          int     gang size: every worker starts together or none does
    duration         float   seconds the job runs once started (without preemption)
    priority         str     optional: priority class (empty = the tenant's default)
    cpus_per_worker  float   optional: CPUs each worker needs (default 1)
    shape            str     optional: the job's shape key (what decides its step time; see
                             :mod:`lorafarm.estimate.shape`); with ``steps`` the simulator's
                             estimator learns step times per shape, as the scheduler does
    steps            int     optional: optimizer steps (the spec's ``training.max_steps``)
    prior_step_s     float   optional: the FLOPs prior's step time for the shape (what the
                             estimator uses before any job of the shape has finished)

Readers for public traces map their columns onto this (:func:`read_trace` picks by content):

* **Microsoft Philly** (msr-fiddle/philly-traces ``cluster_job_log``, JSON): ``jobid``, ``vc``
  (the tenant), ``submitted_time``, ``attempts[-1].start_time/end_time`` and the GPUs in
  ``attempts[-1].detail`` (one worker per machine). Jobs that never ran are skipped.
* **SenseTime Helios** (S-Lab-System-Group/HeliosData ``cluster_log.csv``): ``job_id``, ``vc``
  (tenant), ``gpu_num``, ``node_num`` (workers), ``cpu_num``, ``submit_time`` (datetime or
  seconds), ``duration``. CPU-only jobs (``gpu_num`` 0) are kept only with ``keep_cpu_jobs``.
* **Alibaba PAI** (alibaba/clusterdata ``cluster-trace-gpu-v2020``): ``pai_task_table.csv``
  without a header (``job_name, task_name, inst_num, status, start_time, end_time, plan_cpu,
  plan_mem, plan_gpu, gpu_type``; ``plan_gpu``/``plan_cpu`` in percent of one device). The GPU
  tasks of a job become one gang: all their instances as workers, each of the widest task's shape. With a
  directory, ``pai_job_table.csv`` (``job_name, inst_id, user, status, start_time, end_time``)
  supplies the tenant (``user``); otherwise every job belongs to tenant ``pai``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

COLUMNS = ("submit_time", "tenant", "job_id", "gpus_per_worker", "workers", "duration", "priority",
           "cpus_per_worker", "shape", "steps", "prior_step_s")
FORMATS = ("lorafarm", "philly", "helios", "pai")
_BAD_NAME = re.compile(r"[^a-z0-9-]+")


class TraceError(ValueError):
    """A trace file cannot be read; the message says which row and field, and the fix."""


@dataclass(frozen=True, slots=True)
class SimJob:
    """One job of a trace."""

    job_id: str
    tenant: str
    submit_time: float
    workers: int
    gpus_per_worker: float
    duration: float
    priority: str | None = None
    cpus_per_worker: float = 1.0
    shape: str | None = None
    steps: int | None = None
    prior_step_s: float | None = None

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


def normalise(jobs: Iterable[SimJob]) -> list[SimJob]:
    """Sort by submission (then id) and shift times so the first job arrives at 0."""
    out = sorted(jobs, key=lambda j: (j.submit_time, j.job_id))
    if not out:
        return out
    t0 = out[0].submit_time
    if t0 == 0:
        return out
    return [SimJob(j.job_id, j.tenant, j.submit_time - t0, j.workers, j.gpus_per_worker, j.duration,
                   j.priority, j.cpus_per_worker, j.shape, j.steps, j.prior_step_s) for j in out]


def write_trace(jobs: Sequence[SimJob], path: str | Path) -> None:
    """Write ``jobs`` in lorafarm's format (``.parquet`` or CSV by the suffix)."""
    path = Path(path)
    rows = [{k: ("" if v is None else v) for k, v in asdict(j).items()} for j in jobs]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{c: r[_FIELD[c]] for c in COLUMNS} for r in rows])
        pq.write_table(table, path)
        return
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[_FIELD[c]] for c in COLUMNS])


_FIELD = {"submit_time": "submit_time", "tenant": "tenant", "job_id": "job_id", "gpus_per_worker": "gpus_per_worker",
          "workers": "workers", "duration": "duration", "priority": "priority", "cpus_per_worker": "cpus_per_worker",
          "shape": "shape", "steps": "steps", "prior_step_s": "prior_step_s"}
assert set(_FIELD.values()) == {f.name for f in fields(SimJob)}


def read_trace(path: str | Path, fmt: str = "auto", keep_cpu_jobs: bool = False) -> list[SimJob]:
    """Read a trace in any supported format (``auto`` looks at the file), sorted, starting at 0."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"{path}: no such file or directory — check the --trace path")
    try:
        if fmt == "auto":
            fmt = _detect(path)
        if fmt not in FORMATS:
            raise TraceError(f"{path}: unknown trace format {fmt!r} — use one of {', '.join(FORMATS)}")
        reader = {"lorafarm": _read_lorafarm, "philly": _read_philly, "helios": _read_helios, "pai": _read_pai}[fmt]
        jobs = reader(path) if fmt != "helios" else _read_helios(path, keep_cpu_jobs)
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8 text (byte {e.start}) — give a trace as UTF-8 CSV or JSON, or "
                         "as Parquet") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: invalid JSON at line {e.lineno} ({e.msg}) — a Philly trace is "
                         "cluster_job_log JSON; fix the file") from None
    except csv.Error as e:
        raise TraceError(f"{path}: not a readable CSV file ({e}) — fix the file") from None
    except (AttributeError, TypeError, KeyError, IndexError) as e:
        raise TraceError(f"{path}: not a {fmt} trace (unexpected structure: {type(e).__name__}: {e}) — check "
                         "the file and its format") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read it ({e.strerror or e}) — check the --trace path") from None
    except TraceError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds for a file that is not Parquet
        if type(e).__module__.startswith("pyarrow"):
            raise TraceError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:200]}) — "
                             "re-write it") from None
        raise
    if not jobs:
        raise TraceError(f"{path}: no runnable jobs in the trace — check the file is a {fmt} trace")
    return normalise(jobs)


def _detect(path: Path) -> str:
    if path.is_dir():
        if (path / "pai_task_table.csv").exists():
            return "pai"
        raise TraceError(f"{path}: a directory, but no pai_task_table.csv in it — pass a trace file")
    if path.suffix == ".parquet":
        return "lorafarm"
    with path.open(encoding="utf-8") as f:
        head = f.read(4096)
    if path.suffix == ".json" or head.lstrip().startswith(("[", "{")):
        return "philly"
    first = next(csv.reader([head.splitlines()[0] if head else ""]), [])
    names = {c.strip() for c in first}
    if {"submit_time", "tenant", "job_id", "workers", "duration"} <= names:
        return "lorafarm"
    if {"gpu_num", "submit_time"} <= names:
        return "helios"
    if len(first) == 10:
        return "pai"
    raise TraceError(f"{path}: cannot tell the trace format from its first line {first!r} — use the "
                     f"lorafarm columns ({', '.join(COLUMNS)}) or a Philly/Helios/PAI file")


def _num(value: object, where: str, field: str, kind: type = float) -> float:
    try:
        x = kind(float(value)) if kind is int else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TraceError(f"{where}: {field} {value!r} is not a number — write a number") from None
    if not math.isfinite(x) or x < 0:
        raise TraceError(f"{where}: {field} {value!r} must be a finite number >= 0 — fix the value")
    return x


def _row_job(row: dict, where: str) -> SimJob:
    workers = int(_num(row.get("workers"), where, "workers", int))
    if workers < 1:
        raise TraceError(f"{where}: workers {workers} must be >= 1 — a job has at least one worker")
    cpus = row.get("cpus_per_worker")
    prio = row.get("priority")
    shape, steps, prior = row.get("shape"), row.get("steps"), row.get("prior_step_s")
    return SimJob(
        job_id=str(row.get("job_id")), tenant=str(row.get("tenant")),
        submit_time=_num(row.get("submit_time"), where, "submit_time"), workers=workers,
        gpus_per_worker=_num(row.get("gpus_per_worker", 0) or 0, where, "gpus_per_worker"),
        duration=_num(row.get("duration"), where, "duration"),
        priority=None if prio in (None, "") else str(prio),
        cpus_per_worker=1.0 if cpus in (None, "") else _num(cpus, where, "cpus_per_worker"),
        shape=None if shape in (None, "") else str(shape),
        steps=None if steps in (None, "") else int(_num(steps, where, "steps", int)),
        prior_step_s=None if prior in (None, "") else _num(prior, where, "prior_step_s"),
    )


def _read_lorafarm(path: Path) -> list[SimJob]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    missing = [c for c in COLUMNS[:6] if rows and c not in rows[0]]
    if missing:
        raise TraceError(f"{path}: missing column(s) {', '.join(missing)} — the lorafarm trace format needs "
                         f"{', '.join(COLUMNS[:6])}")
    jobs = [_row_job(r, f"{path}: row {i + 2}") for i, r in enumerate(rows)]
    seen: set[str] = set()
    for i, j in enumerate(jobs):
        if j.job_id in seen:
            raise TraceError(f"{path}: row {i + 2}: job_id {j.job_id!r} repeats — job ids must be unique")
        seen.add(j.job_id)
    return jobs


def _tenant(name: object) -> str:
    """A trace's user/vc as a valid tenant name (lowercase letters, digits, '-'; at most 40)."""
    text = _BAD_NAME.sub("-", str(name or "unknown").lower()).strip("-") or "unknown"
    return text[:40]


def _time(value: object, where: str) -> float:
    """Seconds: a number, or a datetime such as ``2020-04-01 00:00:09`` / Philly's ``2017-10-03 02:43:50``."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace(" PST", "").replace(" PDT", "")).timestamp()
    except ValueError:
        raise TraceError(f"{where}: time {text!r} is neither seconds nor a date — fix the value") from None


def _read_philly(path: Path) -> list[SimJob]:
    data = json.loads(path.read_text(encoding="utf-8"))
    jobs = []
    for i, rec in enumerate(data if isinstance(data, list) else [data]):
        attempts = rec.get("attempts") or []
        last = attempts[-1] if attempts else None
        if not last or not last.get("start_time") or not last.get("end_time"):
            continue  # never ran: no duration to replay
        where = f"{path}: job {i}"
        detail = last.get("detail") or []
        workers = max(1, len(detail))
        gpus = sum(len(d.get("gpus") or []) for d in detail)
        duration = _time(last["end_time"], where) - _time(last["start_time"], where)
        if duration <= 0:
            continue
        jobs.append(SimJob(str(rec.get("jobid", i)), _tenant(rec.get("vc") or rec.get("user")),
                           _time(rec.get("submitted_time"), where), workers,
                           gpus / workers if gpus else 0.0, duration))
    return [j for j in jobs if j.gpus > 0]


def _read_helios(path: Path, keep_cpu_jobs: bool = False) -> list[SimJob]:
    jobs = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            where = f"{path}: row {i + 2}"
            gpus = _num(row.get("gpu_num") or 0, where, "gpu_num")
            if gpus <= 0 and not keep_cpu_jobs:
                continue
            duration = _num(row.get("duration") or 0, where, "duration")
            if duration <= 0:
                continue
            workers = max(1, int(_num(row.get("node_num") or 1, where, "node_num", int)))
            cpus = _num(row.get("cpu_num") or 0, where, "cpu_num")
            jobs.append(SimJob(str(row.get("job_id") or i), _tenant(row.get("vc") or row.get("user")),
                               _time(row.get("submit_time"), where), workers, gpus / workers, duration,
                               cpus_per_worker=(cpus / workers) if cpus else 1.0))
    return jobs


def _read_pai(path: Path) -> list[SimJob]:
    task_file = path / "pai_task_table.csv" if path.is_dir() else path
    job_file = path / "pai_job_table.csv" if path.is_dir() else None
    users: dict[str, str] = {}
    if job_file is not None and job_file.exists():
        with job_file.open(newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) >= 3:
                    users[row[0]] = row[2]
    shapes: dict[str, list] = {}  # job -> [submit, end, GPU workers, GPUs/worker, CPUs/worker]
    with task_file.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 10 or row[0] == "job_name":
                continue
            where = f"{task_file}: row {i + 1}"
            if not row[4] or not row[5]:
                continue  # a task that never ran
            job, inst = row[0], max(1, int(_num(row[2] or 1, where, "inst_num", int)))
            start, end = _num(row[4], where, "start_time"), _num(row[5], where, "end_time")
            gpu = _num(row[8] or 0, where, "plan_gpu") / 100.0
            cpu = _num(row[6] or 0, where, "plan_cpu") / 100.0 or 1.0
            s = shapes.setdefault(job, [start, end, 0, 0.0, 1.0])
            s[0], s[1] = min(s[0], start), max(s[1], end)
            if gpu > 0:  # GPU tasks form the gang (the widest shape); CPU-only helpers are dropped
                s[2] += inst
                if gpu > s[3]:
                    s[3], s[4] = gpu, cpu
    jobs = []
    for job, (start, end, workers, gpu, cpu) in shapes.items():
        if end > start and workers and gpu > 0:
            jobs.append(SimJob(job, _tenant(users.get(job, "pai")), start, workers, gpu, end - start,
                               cpus_per_worker=cpu))
    return jobs
