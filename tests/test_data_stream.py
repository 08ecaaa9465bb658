"""Streaming tokenization and the sharded cache: Ray Data tasks give the in-process cache row for
row (example data, multi-file JSONL and Parquet, local and on the S3 test server), the rows do not
depend on how the data is cut into tasks, a bad line deep in a big file is named by file and line,
and a worker whose row cache is far smaller than the tokenized data trains on the same rows."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import CHATML, cache_spec, fails_fast
from helpers import free_port

import lorafarm.data.pipeline as pipeline
from lorafarm.data import load_rows, prepare
from lorafarm.data.cache_index import read_index
from lorafarm.data.rows import RowSource
from lorafarm.errors import DataError
from lorafarm.storage import Store

HERE = Path(__file__).parent
ROOT = HERE.parent


def _texts(n: int, tag: str) -> list[dict]:
    return [{"text": f"{tag} row {i}: " + "arr " * (i % 9)} for i in range(n)]


def _write_jsonl_files(d: Path, sizes: list[int]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(sizes):
        (d / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _texts(n, f"f{k}")))
    return d


def _write_parquet_files(d: Path, sizes: list[int]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(sizes):
        pq.write_table(pa.Table.from_pylist(_texts(n, f"p{k}")), d / f"part{k}.parquet", row_group_size=25)
    return d


def _small_units(monkeypatch) -> None:
    """Cut even small test data into many units (tasks): a JSONL range of 1 KiB, 50 Parquet rows."""
    monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 1024)
    monkeypatch.setattr(pipeline.stream, "UNIT_ROWS", 50)
    monkeypatch.setattr(pipeline, "LOCAL_BELOW_BYTES", 0)


def _same_cache(a, b) -> None:
    assert a.stats == b.stats
    assert load_rows(a.train_uri).to_pylist() == load_rows(b.train_uri).to_pylist()
    assert read_index(a.train_uri).files == read_index(b.train_uri).files
    if a.eval_uri or b.eval_uri:
        assert load_rows(a.eval_uri).to_pylist() == load_rows(b.eval_uri).to_pylist()


def _ray_only(monkeypatch) -> list[int]:
    """Every unit after the first (timed in process) goes to Ray Data tasks; the returned list
    gets the number of units each Ray Data run took."""
    def not_local(*_a, **_k):
        raise AssertionError("with Ray up and data this size, tokenization must run as Ray Data tasks")

    ran, run_ray = [], pipeline.stream.run_ray

    def counted(units, *a, **k):
        ran.append(len(units))
        return run_ray(units, *a, **k)

    monkeypatch.setattr(pipeline.stream, "run_local", not_local)
    monkeypatch.setattr(pipeline.stream, "ray_pays_off", lambda *_a: True)
    monkeypatch.setattr(pipeline.stream, "run_ray", counted)
    return ran


@pytest.mark.integration
def test_example_chat_data_streams_to_the_in_process_cache(tmp_path, tiny_tokenizer_dir, ray_session, monkeypatch):
    _small_units(monkeypatch)
    tok = tmp_path / "tok"
    from lorafarm.model.tiny import build_tokenizer

    t = build_tokenizer()
    t.chat_template = CHATML
    t.save_pretrained(tok)
    spec = cache_spec(ROOT / "jobs/data/pirate_chat.jsonl", **{"dataset.format": "chat", "training.seq_len": 256,
                                                               "training.packing": True})
    local = prepare(spec, str(tok), Store.open(str(tmp_path / "local")), parallel=False)
    ran = _ray_only(monkeypatch)
    ray_prepared = prepare(spec, str(tok), Store.open(str(tmp_path / "ray")), parallel=True)
    assert local.stats["cache_files"] > 20  # many units really ran
    units = pipeline.stream.plan_units(spec.dataset.uri, "train")
    assert ran == [len(units) - 1]  # all but the first (timed in process) as Ray Data tasks
    _same_cache(local, ray_prepared)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "mixed-s3"])
def test_multi_file_dataset_streams_to_the_in_process_cache(kind, tmp_path, tiny_tokenizer_dir, ray_session,
                                                            monkeypatch, request):
    _small_units(monkeypatch)
    sizes = [120, 7, 260]
    if kind.endswith("s3"):  # fewer, larger units: each is a few S3 round trips
        monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 4096)
        monkeypatch.setattr(pipeline.stream, "UNIT_ROWS", 100)
    local_dir = tmp_path / "data"
    if kind == "mixed-s3":  # JSONL and Parquet files side by side
        _write_jsonl_files(local_dir, sizes[:2])
        _write_parquet_files(local_dir / "more", sizes[2:])
        (local_dir / "more" / "part0.parquet").rename(local_dir / "part9.parquet")
        (local_dir / "more").rmdir()
    else:
        (_write_jsonl_files if kind.startswith("jsonl") else _write_parquet_files)(local_dir, sizes)
    uri, store_root = str(local_dir), str(tmp_path / "store")
    if kind.endswith("s3"):
        import boto3

        bucket = request.getfixturevalue("s3_bucket")
        s3 = boto3.client("s3", endpoint_url=request.getfixturevalue("s3_server"))
        for f in sorted(local_dir.iterdir()):
            s3.put_object(Bucket=bucket, Key=f"ds/{f.name}", Body=f.read_bytes())
        uri, store_root = f"s3://{bucket}/ds", f"s3://{bucket}/store"
    spec = cache_spec(uri, **{"training.packing": kind != "parquet"})
    local = prepare(spec, tiny_tokenizer_dir, Store.open(store_root + "-local"), parallel=False)
    ran = _ray_only(monkeypatch)
    streamed = prepare(spec, tiny_tokenizer_dir, Store.open(store_root), parallel=True)
    assert len(ran) == 1 and ran[0] >= 3  # the units after the first ran as Ray Data tasks
    _same_cache(local, streamed)
    s = local.stats
    assert s["examples"] + s["eval_examples"] == sum(sizes) and 0.1 < s["eval_examples"] / sum(sizes) < 0.3
    # rows come in file order, each file's rows in their order (the eval split is held out of them)
    texts = [pipeline.stream._tokenizer(tiny_tokenizer_dir).decode(r["input_ids"], skip_special_tokens=True)
             for r in load_rows(local.train_uri).to_pylist()] if not spec.training.packing else None
    if texts:
        keys = [(int(m.group(1)), int(m.group(2))) for m in (re.match(r"\w(\d) row (\d+):", x) for x in texts)]
        assert keys == sorted(keys)
    assert prepare(spec, tiny_tokenizer_dir, Store.open(store_root), parallel=True).cache_hit


def test_rows_do_not_depend_on_how_the_data_is_cut_into_tasks(tmp_path, tiny_tokenizer_dir, monkeypatch):
    """Without packing, 1 KiB ranges and one range per file give the same rows and eval split."""
    data = _write_jsonl_files(tmp_path / "data", [300, 50])
    spec = cache_spec(data)
    whole = prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "a")), parallel=False)
    monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 700)
    cut = prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "b")), parallel=False)
    assert whole.stats["cache_files"] == 4 and cut.stats["cache_files"] > 20  # train + eval parts
    assert load_rows(whole.train_uri).to_pylist() == load_rows(cut.train_uri).to_pylist()
    assert load_rows(whole.eval_uri).to_pylist() == load_rows(cut.eval_uri).to_pylist()
    assert {k: v for k, v in whole.stats.items() if k != "cache_files"} == \
        {k: v for k, v in cut.stats.items() if k != "cache_files"}


@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.integration)])
def test_a_bad_line_deep_in_a_multi_file_dataset_is_named_by_file_and_line(parallel, tmp_path, tiny_tokenizer_dir,
                                                                           monkeypatch, request):
    if parallel:
        request.getfixturevalue("ray_session")
        _ray_only(monkeypatch)
    _small_units(monkeypatch)
    data = _write_jsonl_files(tmp_path / "data", [40, 400, 30])
    big = data / "part1.jsonl"
    lines = big.read_text().splitlines(keepends=True)
    lines[376] = '{"text": "unfinished\n'  # line 377, some twenty 1 KiB ranges into the file
    lines[390] = '{"other": 1}\n'  # line 391
    big.write_text("".join(lines))
    msg = fails_fast(lambda: prepare(cache_spec(data), tiny_tokenizer_dir, Store.open(str(tmp_path / "s")),
                                     parallel=parallel), seconds=120)
    assert msg.startswith(f"{big} row 377: invalid JSON ("), msg
    assert msg.endswith("(or set dataset.on_bad_rows: skip)")
    skip = cache_spec(data, **{"dataset.on_bad_rows": "skip"})
    p = prepare(skip, tiny_tokenizer_dir, Store.open(str(tmp_path / "s")), parallel=parallel)
    s = p.stats
    assert s["skipped_bad_rows"] == 2 and s["examples"] + s["eval_examples"] == 470 - 2
    assert sum(s["bad_row_problems"].values()) == 2
    assert s["bad_row_problems"]["column 'text' is missing"] == 1


def test_tokenization_reports_rows_per_second_and_eta(tmp_path, tiny_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 2048)
    monkeypatch.setattr(pipeline, "PROGRESS_EVERY_S", 0.0)
    lines: list[str] = []
    data = _write_jsonl_files(tmp_path / "data", [400])
    prepare(cache_spec(data), tiny_tokenizer_dir, Store.open(str(tmp_path / "s")), parallel=False,
            on_progress=lines.append)
    assert len(lines) > 5
    assert re.fullmatch(r"tokenizing: [\d,]+ rows \(\d+%\), [\d,]+ rows/s, ETA [\d,]+ s", lines[0]), lines[0]
    assert re.fullmatch(r"tokenizing: 400 rows \(100%\), [\d,]+ rows/s, done", lines[-1]), lines[-1]


def test_a_worker_reads_rows_by_row_group_within_its_cache_budget(tmp_path, tiny_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 4096)
    data = _write_jsonl_files(tmp_path / "data", [600, 300])
    p = prepare(cache_spec(data), tiny_tokenizer_dir, Store.open(str(tmp_path / "s")), parallel=False)
    everything = load_rows(p.train_uri)
    budget = everything.nbytes // 8  # a few row groups of 64 rows
    source = RowSource(p.train_uri, cache_bytes=budget)
    order = np.random.default_rng(3).permutation(len(source))
    source.prefetch(order[:16])
    assert source.take(order) == everything.take(order).to_pylist()
    assert 0 < source.peak_cached_bytes <= budget
    assert source.n_labels.tolist() == everything.column("n_labels").to_pylist()
    assert source.max_len == max(len(x) for x in everything.column("input_ids").to_pylist())
    source.close()
    part = sorted(Path(p.train_uri).glob("part-*.parquet"))[3]
    part.write_bytes(part.read_bytes()[:-30])
    broken = RowSource(p.train_uri)
    with pytest.raises(DataError, match=re.escape(f"{part}: the cached tokenized rows are corrupt (")):
        broken.take(range(len(broken)))


@pytest.mark.integration
def test_data_larger_than_the_worker_row_budget_trains_on_the_same_rows(tmp_path):
    """The real recipe (DeepSpeed, one rank over gloo) on a cache some 25x its row budget trains
    within the budget (that the rows it reads are the right ones: the RowSource test above)."""
    from lorafarm.model import resolve_base
    from lorafarm.spec import validate_spec

    data = _write_jsonl_files(tmp_path / "data", [3000])
    spec = validate_spec({
        "tenant": "t", "name": "budget", "dataset": {"uri": str(data), "format": "text"},
        "lora": {"r": 4}, "training": {"max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4,
                                       "seq_len": 32, "learning_rate": 1e-3, "checkpoint_every_steps": 0}})
    store = Store.open(str(tmp_path / "store"))
    prepared = prepare(spec, str(resolve_base(spec.base_model)), store, parallel=False)
    size = load_rows(prepared.train_uri).nbytes
    budget = size // 25  # a few row groups of 64 rows
    job = "job-budget"
    arg = tmp_path / f"{job}.json"
    arg.write_text(json.dumps({"rank": 0, "world": 1, "port": free_port(), "config": {
        "spec": spec.model_dump(mode="json"), "job_id": job, "adapter_uri": store.adapter_uri("t", job),
        "job_uri": store.job_uri("t", job), "train_rows_uri": prepared.train_uri, "eval_rows_uri": None,
        "data_stats": prepared.stats, "dataset_fingerprint": prepared.fingerprint}}))
    out = subprocess.run([sys.executable, str(HERE / "row_budget_probe.py"), str(arg)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "LORAFARM_ROW_CACHE_BYTES": str(budget)})
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["published"] and len(run["losses"]) == 3 and all(math.isfinite(x) for x in run["losses"])
    assert 0 < run["peak_cached_bytes"] <= budget < size // 20
    assert run["groups_read"] >= 3 * 8 // 2  # rows really came from many row groups, step by step


def test_ray_data_takes_over_only_when_it_ends_sooner():
    from lorafarm.data.stream import RAY_START_S, RAY_TASK_COST, ray_pays_off

    assert not ray_pays_off(10_000, 1)  # one CPU: a task is slower than this process
    assert not ray_pays_off(RAY_START_S, 8)  # the rest is shorter than Ray Data's start-up
    break_even = RAY_START_S / (1 - RAY_TASK_COST / 2)  # 2 CPUs: 60 s here
    assert not ray_pays_off(break_even * 0.9, 2) and ray_pays_off(break_even * 1.1, 2)
    assert ray_pays_off(break_even * 0.5, 16)  # more CPUs pay off sooner


@pytest.mark.integration
def test_a_small_dataset_with_ray_up_stays_in_process(tmp_path, tiny_tokenizer_dir, ray_session, monkeypatch):
    _small_units(monkeypatch)
    ran: list[int] = []
    monkeypatch.setattr(pipeline.stream, "run_ray", lambda units, *a, **k: ran.append(len(units)))
    data = _write_jsonl_files(tmp_path / "data", [120, 7, 260])
    spec = cache_spec(str(data))
    local = prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "a")), parallel=False)
    adaptive = prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "b")), parallel=True)
    assert ran == [] and local.stats["cache_files"] > 5  # many units, each far shorter than Ray's start-up
    _same_cache(local, adaptive)
