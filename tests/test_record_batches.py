"""Job records saved in bursts: a tick that starts many jobs writes their records as one batch
file; recovery takes the newest copy of each job (own file or batch, by revision), files it and
deletes the batches; settle() gives batched records their own files and removes emptied batches.
Also the collector freeze that keeps recovered records out of the cyclic GC's way."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core, spec

from lorafarm.scheduler.heap import RecordHeap
from lorafarm.scheduler.records import BATCH_MIN, RecordStore
from lorafarm.scheduler.state import JobRecord, JobState
from lorafarm.storage import Store

TENANTS = "policy: {aging_per_hour: 0}\ntenants:\n  default: {weight: 1}\n  demo: {weight: 1}\n"


def _record(i: int, state: JobState = JobState.QUEUED) -> JobRecord:
    return JobRecord(job_id=f"j{i:04d}", tenant="demo", name=f"n{i}", spec={"k": i}, state=state)


def _batches(root: Path) -> list[Path]:
    return sorted((root / "_jobs" / "_batches").glob("*.jsonl"))


def _own(root: Path, job_id: str) -> dict:
    return json.loads((root / "_jobs" / f"{job_id}.json").read_text())


def test_a_small_batch_writes_own_files_a_large_one_one_batch_file(tmp_path):
    rs = RecordStore(Store.open(str(tmp_path)))
    with rs.batch():
        for i in range(BATCH_MIN - 1):
            rs.save(_record(i))
    assert not _batches(tmp_path) and len(list((tmp_path / "_jobs").glob("*.json"))) == BATCH_MIN - 1
    with rs.batch():
        for i in range(100, 100 + 2 * BATCH_MIN):
            rs.save(_record(i))
        assert not _batches(tmp_path)  # held until the batch ends
    (batch,) = _batches(tmp_path)
    assert len(batch.read_text().splitlines()) == 2 * BATCH_MIN and rs.unfiled == 2 * BATCH_MIN
    assert not (tmp_path / "_jobs" / "j0100.json").exists()


def test_recovery_takes_the_newest_copy_either_way_and_files_it(tmp_path):
    """Batch newer than the own file (queued at submit, started in a burst) and own file newer
    than the batch (saved again after the burst): recovery must tell them apart by revision."""
    rs = RecordStore(Store.open(str(tmp_path)))
    records = [_record(i) for i in range(2 * BATCH_MIN)]
    for r in records:
        rs.save(r)  # own files: QUEUED
    with rs.batch():
        for r in records:
            r.state = JobState.RUNNING
            rs.save(r)  # the batch: RUNNING
    records[0].state = JobState.SUCCEEDED
    rs.save(records[0])  # own file newer than its batch copy
    assert _own(tmp_path, "j0000")["state"] == "SUCCEEDED" and _own(tmp_path, "j0001")["state"] == "QUEUED"
    loaded = {r.job_id: r for r in RecordStore(Store.open(str(tmp_path))).load_all()}
    assert len(loaded) == 2 * BATCH_MIN
    assert loaded["j0000"].state is JobState.SUCCEEDED
    assert {loaded[r.job_id].state for r in records[1:]} == {JobState.RUNNING}
    assert not _batches(tmp_path)  # filed, then deleted
    assert _own(tmp_path, "j0001")["state"] == "RUNNING"


def test_settle_files_batched_records_and_removes_emptied_batches(tmp_path):
    rs = RecordStore(Store.open(str(tmp_path)))
    with rs.batch():
        for i in range(3 * BATCH_MIN):
            rs.save(_record(i))
    assert len(_batches(tmp_path)) == 1
    assert rs.settle(BATCH_MIN) == BATCH_MIN and rs.unfiled == 2 * BATCH_MIN and len(_batches(tmp_path)) == 1
    assert _own(tmp_path, "j0000")["job_id"] == "j0000"  # oldest first
    while rs.unfiled:
        rs.settle(BATCH_MIN)
    assert not _batches(tmp_path)
    assert len(list((tmp_path / "_jobs").glob("*.json"))) == 3 * BATCH_MIN


def test_a_second_batch_supersedes_the_first(tmp_path):
    rs = RecordStore(Store.open(str(tmp_path)))
    records = [_record(i) for i in range(BATCH_MIN)]
    with rs.batch():
        for r in records:
            rs.save(r)
    first = _batches(tmp_path)
    with rs.batch():
        for r in records:
            r.attempts = 7
            rs.save(r)
    assert len(_batches(tmp_path)) == 1 and _batches(tmp_path) != first  # the first had nothing left in it
    assert {r.attempts for r in RecordStore(Store.open(str(tmp_path))).load_all()} == {7}


def test_a_burst_of_starts_goes_to_one_batch_and_a_new_scheduler_knows_every_one(tmp_path, monkeypatch):
    """Through the real core: one tick admits 40 queued jobs; their starts are one batch file,
    not 40 record files; a scheduler started on the store then (before any settle) re-queues
    every one as recovered, none lost or left QUEUED-as-never-started."""
    monkeypatch.setattr(RecordStore, "settle", lambda self, budget=0: 0)  # no filing: recovery alone must find them
    launcher = FakeLauncher()
    core = make_core(tmp_path, TENANTS, FakeClock(), launcher, FakeCapacity(cpus=64))
    ids = [core.submit(spec(name=f"b{i}"))["job_id"] for i in range(40)]
    core.tick()
    assert len(launcher.started) == 40 and len(_batches(tmp_path)) == 1
    assert {_own(tmp_path, j)["state"] for j in ids} == {"QUEUED"}  # own files still say queued
    again = make_core(tmp_path, TENANTS, FakeClock(), FakeLauncher(), FakeCapacity(cpus=64))
    assert {again.jobs[j].state for j in ids} == {JobState.QUEUED}
    assert {again.jobs[j].attempts for j in ids} == {1}  # the started copy won: it ran once
    assert all(again.jobs[j].events[-1].kind == "recovered" for j in ids)
    assert not _batches(tmp_path)


def test_settle_runs_every_tick_so_batches_drain(tmp_path):
    core = make_core(tmp_path, TENANTS, FakeClock(), FakeLauncher(), FakeCapacity(cpus=64))
    ids = [core.submit(spec(name=f"s{i}"))["job_id"] for i in range(40)]
    core.tick()
    core.tick()
    assert not _batches(tmp_path) and core.records.unfiled == 0
    assert {_own(tmp_path, j)["state"] for j in ids} == {"RUNNING"}


@pytest.fixture
def unfreeze():
    yield
    gc.unfreeze()  # the rest of the test session is not frozen


def test_record_heap_freezes_after_the_records_doubled(unfreeze):
    heap = RecordHeap()
    assert not heap.grew(10)  # too few to be worth a full collection
    assert heap.grew(1500) and gc.get_freeze_count() > 0 and heap.frozen_at == 1500
    assert not heap.grew(2999) and heap.grew(3000)


def test_batches_on_the_s3_test_server(s3_bucket):
    """The same layout on an object store: one batch object, recovered, filed, deleted."""
    from lorafarm.storage import filesystem

    root = f"s3://{s3_bucket}/store"
    rs = RecordStore(Store.open(root))
    records = [_record(i) for i in range(BATCH_MIN)]
    for r in records[:2]:
        rs.save(r)
    with rs.batch():
        for r in records:
            r.state = JobState.RUNNING
            rs.save(r)
    fs, path = filesystem(root)
    assert len(fs.ls(f"{path}/_jobs/_batches", detail=False)) == 1
    fs.invalidate_cache()
    loaded = RecordStore(Store.open(root)).load_all()
    assert [r.job_id for r in loaded] == [r.job_id for r in records]
    assert {r.state for r in loaded} == {JobState.RUNNING}
    fs.invalidate_cache()
    assert not fs.exists(f"{path}/_jobs/_batches") or not fs.ls(f"{path}/_jobs/_batches", detail=False)
    assert json.loads(fs.cat(f"{path}/_jobs/j0001.json"))["state"] == "RUNNING"
