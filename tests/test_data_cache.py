"""The tokenization cache: a second prepare is a hit with identical rows, every change that alters
the rows is a miss, and Ray Data tokenization matches the local path."""

from __future__ import annotations

import os

import pytest
from data_helpers import (
    CHATML,
    cache_data,
    cache_spec,
)

from lorafarm.data import (
    load_rows,
    prepare,
)
from lorafarm.model.tiny import build_tokenizer
from lorafarm.storage import Store


def test_second_prepare_is_a_cache_hit_with_identical_rows(tmp_path, tiny_tokenizer_dir, monkeypatch):
    data = cache_data(tmp_path / "d.jsonl")
    store = Store.open(str(tmp_path / "store"))
    first = prepare(cache_spec(data), tiny_tokenizer_dir, store, parallel=False)
    assert not first.cache_hit
    assert first.stats["examples"] == 16 and first.stats["eval_examples"] == 4 and first.stats["rows"] == 16
    assert first.train_uri.startswith(str(tmp_path / "store" / "acme" / "_cache" / "tokenized"))

    import lorafarm.data.pipeline as pipeline

    def no_reading(*_a, **_k):
        raise AssertionError("a cache hit must not read or tokenize the data")

    monkeypatch.setattr(pipeline.stream, "plan_units", no_reading)
    monkeypatch.setattr(pipeline.stream, "encode_unit", no_reading)
    second = prepare(cache_spec(data), tiny_tokenizer_dir, store, parallel=False)
    assert second.cache_hit and second.stats == first.stats and second.fingerprint == first.fingerprint
    assert (second.train_uri, second.eval_uri) == (first.train_uri, first.eval_uri)
    assert load_rows(second.train_uri).to_pylist() == load_rows(first.train_uri).to_pylist()
    monkeypatch.undo()

    # the cached rows are the encoding of the non-held-out examples, in order
    rows = load_rows(first.train_uri).to_pylist()
    tok = build_tokenizer()
    texts = [tok.decode(r["input_ids"], skip_special_tokens=True) for r in rows]
    evals = [tok.decode(r["input_ids"], skip_special_tokens=True) for r in load_rows(first.eval_uri).to_pylist()]
    assert sorted(texts + evals, key=lambda s: int(s.split(":")[0][4:])) == [
        f"row {i}: " + "arr " * (i % 7) for i in range(20)]
    assert [int(t.split(":")[0][4:]) for t in texts] == sorted(int(t.split(":")[0][4:]) for t in texts)


@pytest.mark.parametrize("change", ["seq_len", "packing", "format", "tokenizer", "data", "data_mtime"])
def test_a_change_that_alters_the_rows_is_a_cache_miss(tmp_path, tiny_tokenizer_dir, change):
    data = cache_data(tmp_path / "d.jsonl")
    store = Store.open(str(tmp_path / "store"))
    first = prepare(cache_spec(data), tiny_tokenizer_dir, store, parallel=False)
    over, tok_dir = {}, tiny_tokenizer_dir
    if change == "seq_len":
        over = {"training.seq_len": 12}
    elif change == "packing":
        over = {"training.packing": True}
    elif change == "format":
        over = {"dataset.format": "prompt_completion"}
    elif change == "tokenizer":
        tok_dir = str(tmp_path / "tok2")
        t = build_tokenizer()
        t.chat_template = CHATML
        t.save_pretrained(tok_dir)
    elif change == "data":
        cache_data(data, n=21)
    else:  # same size, other bytes, a new mtime
        data.write_text(data.read_text().replace("row 3:", "row 9:"))
        st = data.stat()
        os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = prepare(cache_spec(data, **over), tok_dir, store, parallel=False)
    assert not again.cache_hit
    assert again.train_uri != first.train_uri
    a, b = load_rows(first.train_uri).to_pylist(), load_rows(again.train_uri).to_pylist()
    if change == "seq_len":
        assert again.stats["truncated"] > 0 and max(len(r["input_ids"]) for r in b) == 12
    elif change == "packing":
        assert len(b) < len(a) and sum(len(r["seq_lens"]) for r in b) == len(a)
    elif change == "format":
        assert again.stats["label_tokens"] < first.stats["label_tokens"]
    elif change == "data":
        assert again.stats["examples"] == 17 and again.fingerprint != first.fingerprint
    elif change == "data_mtime":
        assert again.fingerprint != first.fingerprint and a != b
    # the unchanged job on the current data still hits (the first entry, or the new one after a data change)
    hit = prepare(cache_spec(data), tiny_tokenizer_dir, store, parallel=False)
    assert hit.cache_hit
    assert hit.train_uri == (again.train_uri if change.startswith("data") else first.train_uri)


@pytest.mark.integration
def test_ray_data_tokenization_matches_local_and_is_cached(tmp_path, tiny_tokenizer_dir, ray_session, monkeypatch):
    import lorafarm.data.pipeline as pipeline

    data = cache_data(tmp_path / "d.jsonl", n=150)
    monkeypatch.setattr(pipeline.stream, "UNIT_BYTES", 1024)  # several units (tasks) for 150 small rows
    spec = cache_spec(data, **{"training.packing": True})
    local = prepare(spec, tiny_tokenizer_dir, Store.open(str(tmp_path / "s1")), parallel=False)
    store = Store.open(str(tmp_path / "s2"))

    def not_local(*_a, **_k):
        raise AssertionError("with Ray up, tokenization must run as Ray Data tasks")

    monkeypatch.setattr(pipeline.stream, "run_local", not_local)
    monkeypatch.setattr(pipeline.stream, "ray_pays_off", lambda *_a: True)  # after the first unit, timed here
    monkeypatch.setattr(pipeline, "LOCAL_BELOW_BYTES", 0)  # the data counts as large here
    ray_prepared = prepare(spec, tiny_tokenizer_dir, store, parallel=True)
    assert not ray_prepared.cache_hit and ray_prepared.stats == local.stats
    assert load_rows(ray_prepared.train_uri).to_pylist() == load_rows(local.train_uri).to_pylist()
    assert load_rows(ray_prepared.eval_uri).to_pylist() == load_rows(local.eval_uri).to_pylist()
    hit = prepare(spec, tiny_tokenizer_dir, store, parallel=True)
    assert hit.cache_hit and hit.stats == local.stats
