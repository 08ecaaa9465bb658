"""The data module: formats and loss masks, pre-shifted labels, truncation, packing equality on
tiny-llama, deterministic sharding, bad-row messages, file inputs and the tokenization cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from lorafarm.data import (
    IGNORE,
    collate,
    encode,
    epoch_order,
    global_batch,
    list_files,
    load_rows,
    micro_batches,
    prepare,
    read_examples,
    steps_per_epoch,
    to_rows,
    worker_slice,
)
from lorafarm.errors import DataError
from lorafarm.model.tiny import build_model, build_tokenizer
from lorafarm.spec import DatasetSpec, validate_spec
from lorafarm.storage import Store

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Ahoy."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Arr!"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture
def chatml_tok():
    t = build_tokenizer()
    t.chat_template = CHATML
    return t


def trained_text(tok, enc) -> str:
    return tok.decode([x for x in enc.labels if x != IGNORE])


def assert_pre_shifted(enc) -> None:
    """labels[t] is input_ids[t+1] or IGNORE; the last position never carries a label."""
    assert len(enc.labels) == len(enc.input_ids)
    assert enc.labels[-1] == IGNORE
    for t, label in enumerate(enc.labels[:-1]):
        assert label in (IGNORE, enc.input_ids[t + 1]), t


# ------------------------------------------------------------------ formats and masks
def test_text_trains_every_token_after_bos(tok):
    enc = encode({"text": "hello world"}, "text", tok, 64)
    assert enc.input_ids == [tok.bos_token_id, *tok("hello world", add_special_tokens=False)["input_ids"],
                             tok.eos_token_id]
    assert enc.labels == enc.input_ids[1:] + [IGNORE]
    assert enc.n_labels == len("hello world") + 1 and not enc.truncated
    assert_pre_shifted(enc)


def test_prompt_completion_trains_only_the_completion_and_eos(tok):
    enc = encode({"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "prompt_completion", tok, 64)
    assert trained_text(tok, enc) == " 4</s>"
    n_prompt = 1 + len("Q: 2+2?\nA:")  # bos + prompt bytes
    # the last prompt position predicts the first completion token; nothing before it has a label
    assert all(x == IGNORE for x in enc.labels[: n_prompt - 1])
    assert enc.labels[n_prompt - 1] == enc.input_ids[n_prompt] == tok(" ", add_special_tokens=False)["input_ids"][0]
    assert enc.n_labels == 3
    assert_pre_shifted(enc)


def test_chat_builtin_template_trains_only_assistant_turns(tok):
    assert not getattr(tok, "chat_template", None)
    enc = encode({"messages": CHAT}, "chat", tok, 512)
    assert tok.decode(enc.input_ids) == (
        "<s><|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\nAhoy.</s>\n<|user|>\nBye\n<|assistant|>\nArr!</s>\n"
    )
    assert trained_text(tok, enc) == "Ahoy.</s>Arr!</s>"
    assert enc.n_labels == len("Ahoy.") + 1 + len("Arr!") + 1
    assert_pre_shifted(enc)
    # the labelled positions are exactly those whose next token lies inside an assistant turn
    first = 1 + len("<|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\n")  # bos + one token per byte
    assert tok.decode(enc.input_ids[first : first + 5]) == "Ahoy."
    assert enc.labels[first - 1] == enc.input_ids[first] and enc.labels[first - 2] == IGNORE


def test_chat_with_hf_chat_template_trains_only_assistant_turns(chatml_tok):
    enc = encode({"messages": CHAT}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids) == chatml_tok.apply_chat_template(CHAT, tokenize=False)
    # content plus the turn's end marker; headers, user/system turns and the newline glue are not trained
    assert trained_text(chatml_tok, enc) == "Ahoy.<|im_end|>Arr!<|im_end|>"
    assert_pre_shifted(enc)


def test_chat_with_template_first_message_from_assistant(chatml_tok):
    msgs = [{"role": "assistant", "content": "Ahoy!"}, {"role": "user", "content": "Hi"}]
    enc = encode({"messages": msgs}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids).startswith("<|im_start|>assistant\nAhoy!")
    assert trained_text(chatml_tok, enc) == "Ahoy!<|im_end|>"  # the header is not trained, as in later turns
    # the content also occurs in a preamble the template adds: the span is still the turn's own
    chatml_tok.chat_template = "Say Ahoy! back.\n" + CHATML
    enc = encode({"messages": msgs}, "chat", chatml_tok, 512)
    assert chatml_tok.decode(enc.input_ids).startswith("Say Ahoy! back.\n<|im_start|>assistant\nAhoy!")
    assert trained_text(chatml_tok, enc) == "Ahoy!<|im_end|>"


def test_truncation_cuts_to_seq_len_and_keeps_labels_pre_shifted(tok):
    enc = encode({"text": "x" * 100}, "text", tok, 16)
    assert len(enc.input_ids) == 16 and enc.truncated
    assert enc.labels == enc.input_ids[1:] + [IGNORE] and enc.n_labels == 15
    # a prompt longer than seq_len leaves nothing to learn
    lost = encode({"prompt": "p" * 40, "completion": "c"}, "prompt_completion", tok, 16)
    assert lost.truncated and lost.n_labels == 0
    exact = encode({"text": "abc"}, "text", tok, 5)  # bos + 3 + eos fits exactly
    assert not exact.truncated and exact.n_labels == 4


# ------------------------------------------------------------------ packing and collate
def test_collate_unpacked_pads_with_2d_mask(tok):
    rows = to_rows([(e.input_ids, e.labels) for e in (encode({"text": t}, "text", tok, 64) for t in ("ab", "abcdef"))],
                   64, packing=False)
    b = collate(rows, tok.pad_token_id, packing=False)
    assert b["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 8]
    assert b["input_ids"][0, 4:].tolist() == [tok.pad_token_id] * 4
    assert b["labels"][0, 3:].tolist() == [IGNORE] * 5
    assert b["position_ids"][1].tolist() == list(range(8))


def test_packing_is_greedy_and_order_preserving():
    ex = [([1] * n, [IGNORE] * (n - 1) + [IGNORE]) for n in (5, 4, 3, 9, 2)]
    rows = to_rows(ex, 10, packing=True)
    assert [r["seq_lens"] for r in rows] == [[5, 4], [3], [9], [2]]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_packed_mask_is_block_diagonal_causal(tok):
    row = to_rows([([1, 5, 6], [5, 6, IGNORE]), ([1, 7], [7, IGNORE])], 8, packing=True)
    b = collate(row + to_rows([([1, 9, 9, 9], [9, 9, 9, IGNORE])], 8, packing=True), 0, packing=True)
    allowed = b["attention_mask"] == 0
    assert b["attention_mask"].shape == (2, 1, 5, 5)
    assert allowed[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],  # the second example never sees the first
        [0, 0, 0, 1, 1],
    ]
    assert allowed[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding attends to itself only
    assert b["position_ids"][0].tolist() == [0, 1, 2, 0, 1]
    assert b["attention_mask"].min() == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model().eval()


def test_packed_batch_gives_the_same_logits_and_loss_as_unpacked(tok, tiny_model):
    texts = [
        [{"role": "user", "content": "Where be the gold?"}, {"role": "assistant", "content": "Buried, arr."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy, matey! Fair winds."}],
        [{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Ship?"},
         {"role": "assistant", "content": "The Gull."}],
        [{"role": "user", "content": "Rum?"}, {"role": "assistant", "content": "Always."}],
        [{"role": "user", "content": "And the parrot, what does it say?"}, {"role": "assistant", "content": "Squawk"}],
    ]
    encs = [encode({"messages": m}, "chat", tok, 128) for m in texts]
    pairs = [(e.input_ids, e.labels) for e in encs]
    packed = to_rows(pairs, 128, packing=True)
    assert [len(r["seq_lens"]) for r in packed] == [2, 2, 1]  # several per row; rows of unequal length get padded
    unpacked = to_rows(pairs, 128, packing=False)
    pb, ub = collate(packed, tok.pad_token_id, True), collate(unpacked, tok.pad_token_id, False)

    def forward(b):
        with torch.no_grad():
            return tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              position_ids=b["position_ids"]).logits

    def loss(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)

    pl, ul = forward(pb), forward(ub)
    i = 0
    for r, row in enumerate(packed):
        start = 0
        for n in row["seq_lens"]:
            torch.testing.assert_close(pl[r, start : start + n], ul[i, :n], rtol=1e-5, atol=1e-5)
            i += 1
            start += n
    assert loss(pl, pb["labels"]).item() == pytest.approx(loss(ul, ub["labels"]).item(), rel=1e-5)
    assert int((pb["labels"] != IGNORE).sum()) == int((ub["labels"] != IGNORE).sum()) == sum(e.n_labels for e in encs)

    # the check can fail: a plain padding mask lets the second example attend to the first
    leaky = {**pb, "attention_mask": (pb["attention_mask"][:, 0].diagonal(dim1=1, dim2=2) == 0).long()}
    n0, n1 = packed[0]["seq_lens"][:2]
    assert (forward(leaky)[0, n0 : n0 + n1] - ul[1, :n1]).abs().max() > 1e-3


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("num_rows,gbs", [(40, 8), (37, 4)])
def test_global_batches_are_the_same_for_1_2_4_workers(num_rows, gbs):
    per_epoch = steps_per_epoch(num_rows, gbs)
    assert per_epoch == num_rows // gbs
    for k in range(3 * per_epoch):
        batch = global_batch(k, num_rows, gbs, seed=11)
        assert len(batch) == gbs and len(set(batch.tolist())) == gbs
        for world in (1, 2, 4):
            slices = [worker_slice(batch, rank, world) for rank in range(world)]
            assert all(len(s) == gbs // world for s in slices)  # each worker reads only its slice
            assert np.array_equal(np.concatenate(slices), batch)  # ...and together they are the batch
            # micro batches cover exactly the worker's slice, in order
            for s in slices:
                assert np.array_equal(np.concatenate(micro_batches(s, 2)), s)
        assert np.array_equal(global_batch(k, num_rows, gbs, seed=11), batch)  # deterministic


def test_each_epoch_is_a_fresh_permutation_covering_every_row():
    num_rows, gbs, seed = 40, 8, 3
    epochs = []
    for epoch in range(3):
        seen = np.concatenate([global_batch(epoch * 5 + i, num_rows, gbs, seed) for i in range(5)])
        assert sorted(seen.tolist()) == list(range(num_rows))  # every row exactly once per epoch
        assert np.array_equal(seen, epoch_order(num_rows, seed, epoch))
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epoch_order(num_rows, seed + 1, 0), epochs[0])  # the seed matters
    assert not np.array_equal(epochs[0], np.arange(num_rows))  # shuffled at all


def test_too_few_rows_for_one_global_batch_is_a_clear_error():
    with pytest.raises(DataError, match="only 3 training rows for a global batch of 8"):
        global_batch(0, 3, 8, 0)


# ------------------------------------------------------------------ reading and bad rows
def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def spec_for(path, fmt="text", **kw) -> DatasetSpec:
    return DatasetSpec(uri=str(path), format=fmt, **kw)


GOOD = {"text": "fine", "prompt": "p", "completion": "c",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


@pytest.mark.parametrize("fmt,bad,problem", [
    ("text", {"body": "x"}, "column 'text' is missing"),
    ("text", {"text": 5}, "column 'text' must be text, got int"),
    ("text", {"text": "   "}, "column 'text' is empty"),
    ("text", '{"text": "unterminated', "invalid JSON"),
    ("text", "[1, 2]", "expected a JSON object, got list"),
    ("prompt_completion", {"prompt": "p"}, "column 'completion' is missing"),
    ("prompt_completion", {"prompt": ["p"], "completion": "c"}, "column 'prompt' must be text, got list"),
    ("prompt_completion", {"prompt": "p", "completion": ""}, "column 'completion' is empty"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     "no assistant turn"),
    ("chat", {"messages": "hi"}, "column 'messages' must be a non-empty list"),
    ("chat", {"messages": [{"role": "pirate", "content": "arr"}]}, "message 0 has role 'pirate'"),
    ("chat", {"messages": [{"role": "user", "content": 3}]}, "message 0 must be an object with string"),
])
def test_bad_row_names_file_row_and_problem(tmp_path, fmt, bad, problem):
    f = write_jsonl(tmp_path / "data.jsonl", [GOOD, "", bad, GOOD])  # blank line 2 counts: bad is line 3
    with pytest.raises(DataError) as info:
        read_examples(str(f), spec_for(f, fmt))
    msg = str(info.value)
    assert msg.startswith(f"{f} row 3: {problem}"), msg
    assert "on_bad_rows: skip" in msg


def test_skip_mode_counts_bad_rows_by_problem(tmp_path):
    f = write_jsonl(tmp_path / "data.jsonl", [
        {"text": "one"}, {"text": ""}, {"text": 7}, "{oops", {"text": "two"}, {"nope": 1}, {"text": "  "},
        {"text": "three"},
    ])
    table, report = read_examples(str(f), spec_for(f, on_bad_rows="skip"))
    assert table.column("text").to_pylist() == ["one", "two", "three"]
    assert table.column("source_row").to_pylist() == [f"{f}:1", f"{f}:5", f"{f}:8"]
    assert report.skipped == 5
    assert dict(report.problems) == {
        "column 'text' is empty": 2, "column 'text' must be text, got int": 1,
        "invalid JSON (Expecting property name enclosed in double quotes)": 1, "column 'text' is missing": 1,
    }
    assert report.examples[0] == f"{f} row 2: column 'text' is empty — remove the row or fill it"


def test_parquet_bad_row_is_named_by_its_index(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), f)
    with pytest.raises(DataError, match=rf"^{f} row 1: column 'text' must be text, got NoneType"):
        read_examples(str(f), spec_for(f))
    g = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), g)
    with pytest.raises(DataError, match=r"ints\.parquet row 0: column 'text' must be text, got int"):
        read_examples(str(g), spec_for(g))
    _, report = read_examples(str(f), spec_for(f, on_bad_rows="skip"))
    assert report.skipped == 1


def test_parquet_chat_and_prompt_completion(tmp_path, tok):
    f = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT, "extra": 1}, {"messages": CHAT[1:3], "extra": 2}]), f)
    table, report = read_examples(str(f), spec_for(f, "chat"))
    assert table.column("messages").to_pylist() == [CHAT, CHAT[1:3]] and report.skipped == 0
    assert trained_text(tok, encode(table.to_pylist()[1], "chat", tok, 128)) == "Ahoy.</s>"
    g = tmp_path / "pc.parquet"
    pq.write_table(pa.table({"q": ["1+1=", "2+2="], "a": ["2", "4"]}), g)
    table, _ = read_examples(str(g), spec_for(g, "prompt_completion", prompt_column="q", completion_column="a"))
    assert table.select(["prompt", "completion"]).to_pylist() == [
        {"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]


def test_json_array_file_and_unicode_line_separators(tmp_path):
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}, {"text": ""}]))
    with pytest.raises(DataError, match=r"rows\.json row 2: column 'text' is empty"):
        read_examples(str(arr), spec_for(arr))
    # U+2028/U+2029/U+0085 may stand unescaped inside JSON strings: they do not end a JSONL line
    f = tmp_path / "u.jsonl"
    f.write_text(json.dumps({"text": "a\u2028b\u2029c\x85d"}, ensure_ascii=False) + "\n" + '{"text": ""}\n',
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"u\.jsonl row 2: column 'text' is empty"):
        read_examples(str(f), spec_for(f))
    table, _ = read_examples(str(f), spec_for(f, on_bad_rows="skip"))
    assert table.column("text").to_pylist() == ["a\u2028b\u2029c\x85d"]
    # a UTF-8 byte-order mark (Windows editors) is not part of row 1; CRLF line ends are fine
    g = tmp_path / "bom.jsonl"
    g.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\r\n{"text": "second"}\r\n')
    assert read_examples(str(g), spec_for(g))[0].column("text").to_pylist() == ["first", "second"]


def test_not_utf8_is_a_clear_error(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text .* save the file as UTF-8"):
        read_examples(str(f), spec_for(f))


def test_directory_and_glob_inputs(tmp_path):
    d = tmp_path / "ds"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    pq.write_table(pa.table({"text": ["a1"]}), d / "a.parquet")
    write_jsonl(d / "c.json", [{"text": "c1"}])
    (d / "notes.txt").write_text("not data")
    write_jsonl(d / "sub" / "nested.jsonl", [{"text": "nested"}])
    assert list_files(str(d)) == [str(d / "a.parquet"), str(d / "b.jsonl"), str(d / "c.json")]
    assert list_files(f"file://{d}") == list_files(str(d))
    assert list_files(str(d / "*.jsonl")) == [str(d / "b.jsonl")]
    assert list_files(str(d / "[ab].*")) == [str(d / "a.parquet"), str(d / "b.jsonl")]
    assert list_files(str(d / "**" / "*.jsonl")) == [str(d / "b.jsonl"), str(d / "sub" / "nested.jsonl")]
    table, _ = read_examples(str(d), spec_for(d))
    assert table.column("text").to_pylist() == ["a1", "b1", "b2", "c1"]
    assert table.column("source_row").to_pylist() == [
        f"{d / 'a.parquet'}:0", f"{d / 'b.jsonl'}:1", f"{d / 'b.jsonl'}:2", f"{d / 'c.json'}:1"]
    with pytest.raises(DataError, match="not found — check dataset.uri"):
        list_files(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no .jsonl, .json or .parquet files there"):
        list_files(str(d / "*.txt"))


# ------------------------------------------------------------------ tokenization cache
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(out)
    return str(out)


def job(uri, **over) -> dict:
    spec = {
        "tenant": "acme", "name": "cache",
        "dataset": {"uri": str(uri), "format": "text", "eval_fraction": 0.2},
        "training": {"max_steps": 1, "global_batch_size": 2, "micro_batch_size": 1, "seq_len": 48, "seed": 5},
    }
    for path, value in over.items():
        node = spec
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate_spec(spec)


def cache_data(path: Path, n: int = 20) -> Path:
    return write_jsonl(path, [{"text": f"row {i}: " + "arr " * (i % 7), "prompt": f"q{i}", "completion": f"a{i}"}
                              for i in range(n)])


def test_second_prepare_is_a_cache_hit_with_identical_rows(tmp_path, tokenizer_dir, monkeypatch):
    data = cache_data(tmp_path / "d.jsonl")
    store = Store.open(str(tmp_path / "store"))
    first = prepare(job(data), tokenizer_dir, store, parallel=False)
    assert not first.cache_hit
    assert first.stats["examples"] == 16 and first.stats["eval_examples"] == 4 and first.stats["rows"] == 16
    assert first.train_uri.startswith(str(tmp_path / "store" / "acme" / "_cache" / "tokenized"))

    import lorafarm.data.pipeline as pipeline

    def no_reading(*_a, **_k):
        raise AssertionError("a cache hit must not read or tokenize the data")

    monkeypatch.setattr(pipeline, "read_examples", no_reading)
    monkeypatch.setattr(pipeline, "_encode_local", no_reading)
    second = prepare(job(data), tokenizer_dir, store, parallel=False)
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
def test_a_change_that_alters_the_rows_is_a_cache_miss(tmp_path, tokenizer_dir, change):
    data = cache_data(tmp_path / "d.jsonl")
    store = Store.open(str(tmp_path / "store"))
    first = prepare(job(data), tokenizer_dir, store, parallel=False)
    over, tok_dir = {}, tokenizer_dir
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
    again = prepare(job(data, **over), tok_dir, store, parallel=False)
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
    hit = prepare(job(data), tokenizer_dir, store, parallel=False)
    assert hit.cache_hit
    assert hit.train_uri == (again.train_uri if change.startswith("data") else first.train_uri)


@pytest.mark.integration
def test_ray_data_tokenization_matches_local_and_is_cached(tmp_path, tokenizer_dir, ray_session, monkeypatch):
    import lorafarm.data.pipeline as pipeline

    data = cache_data(tmp_path / "d.jsonl", n=150)
    spec = job(data, **{"training.packing": True})
    local = prepare(spec, tokenizer_dir, Store.open(str(tmp_path / "s1")), parallel=False)
    store = Store.open(str(tmp_path / "s2"))

    def not_local(*_a, **_k):
        raise AssertionError("with Ray up, tokenization must run as Ray Data tasks")

    monkeypatch.setattr(pipeline, "_encode_local", not_local)
    monkeypatch.setattr(pipeline, "LOCAL_BELOW_EXAMPLES", 100)  # 150 examples count as large here
    ray_prepared = prepare(spec, tokenizer_dir, store, parallel=True)
    assert not ray_prepared.cache_hit and ray_prepared.stats == local.stats
    assert load_rows(ray_prepared.train_uri).to_pylist() == load_rows(local.train_uri).to_pylist()
    assert load_rows(ray_prepared.eval_uri).to_pylist() == load_rows(local.eval_uri).to_pylist()
    hit = prepare(spec, tokenizer_dir, store, parallel=True)
    assert hit.cache_hit and hit.stats == local.stats


# ------------------------------------------------------------------ corrupt and unreadable files
def fails_fast(fn, seconds: float = 5.0) -> str:
    """The DataError message ``fn`` raises, checked to come within ``seconds`` (a hang fails the
    test instead of blocking it) and to be one line for the user, no pyarrow traceback chained."""
    import threading
    import time

    out: dict = {}

    def call():
        start = time.monotonic()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e
        out["elapsed"] = time.monotonic() - start

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: a hang, not a failure"
    err = out.get("error")
    assert isinstance(err, DataError), f"expected DataError, got {err!r}"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), "chained"
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert out["elapsed"] < seconds
    return msg


def multi_group_parquet(path: Path, **kw) -> Path:
    pq.write_table(pa.table({"text": [f"row {i} " + "arr " * (i % 5) for i in range(30)]}), path,
                   row_group_size=10, **kw)
    return path


def overwrite(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("where", ["page_header", "compressed_data"])
def test_corrupt_parquet_row_group_names_file_and_row_group(tmp_path, mode, where):
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    offset = start if where == "page_header" else start + chunk.total_compressed_size // 2
    overwrite(f, offset, b"\xff" * 8)  # the footer stays valid: the file opens, row group 1 does not decode
    assert pq.ParquetFile(f).metadata.num_row_groups == 3
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows=mode)))
    assert msg.startswith(f"{f}: row group 1 of 3 (rows 10-19) is corrupt ("), msg
    assert "re-write the file from its source" in msg
    # skip drops bad rows; a corrupt row group is file-level corruption and never silently dropped
    assert "on_bad_rows: skip does not skip corrupt data" in msg


def test_page_checksums_are_verified(tmp_path):
    # without compression a flipped byte still decodes, as other text; the page CRC catches it
    f = multi_group_parquet(tmp_path / "crc.parquet", compression="none", use_dictionary=False,
                            write_page_checksum=True)
    chunk = pq.ParquetFile(f).metadata.row_group(2).column(0)
    overwrite(f, chunk.data_page_offset + chunk.total_compressed_size - 3, b"Z")
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows="skip")))
    assert msg.startswith(f"{f}: row group 2 of 3 (rows 20-29) is corrupt (") and "checksum" in msg, msg


@pytest.mark.parametrize("cut", ["half", "footer_only", "empty"])
def test_truncated_parquet_is_a_clear_error(tmp_path, cut):
    f = multi_group_parquet(tmp_path / "t.parquet")
    raw = f.read_bytes()
    f.write_bytes({"half": raw[: len(raw) // 2], "footer_only": raw[:-8], "empty": b""}[cut])
    for mode in ("error", "skip"):
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, on_bad_rows=m)))
        assert msg.startswith(f"{f}: not a readable Parquet file ("), msg
        assert "truncated" in msg and "re-write or re-upload it" in msg


@pytest.mark.parametrize("case", ["permission", "directory", "dangling_link", "fifo"])
def test_unreadable_file_is_named_not_a_hang(tmp_path, case):
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": "fine"}])
    bad = d / "x.jsonl"
    uri = str(d)
    if case == "permission":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their mode")
        write_jsonl(bad, [{"text": "secret"}])
        bad.chmod(0)
        hint = "Permission denied"
    elif case == "directory":
        bad.mkdir()  # a directory listing leaves sub-directories out; a glob does not
        uri, hint = str(d / "*.jsonl"), "a directory, not a data file"
    elif case == "dangling_link":
        bad.symlink_to(tmp_path / "gone.jsonl")
        hint = f"a broken symbolic link to {tmp_path / 'gone.jsonl'}"
    else:
        os.mkfifo(bad)  # opening it would block until a writer comes
        hint = "not a regular file"
    try:
        for mode in ("error", "skip"):
            msg = fails_fast(lambda m=mode: read_examples(uri, spec_for(uri, on_bad_rows=m)))
            assert msg.startswith(f"{bad}: "), msg
            assert hint in msg and ("dataset.uri" in msg), msg
        if case == "dangling_link":  # prepare() fingerprints the files before reading them
            from lorafarm.data import fingerprint

            assert fails_fast(lambda: fingerprint(uri)).startswith(f"{bad}: cannot read the file")
            direct = fails_fast(lambda: list_files(str(bad)))
            assert direct.startswith(f"{bad}: a broken symbolic link"), direct
    finally:
        if case == "permission":
            bad.chmod(0o644)


def test_invalid_utf8_names_its_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n{"text": "four"}\n')
    for mode in ("error", "skip"):  # an encoding error is the file's, not one row's: skip does not hide it
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, on_bad_rows=m)))
        assert msg.startswith(f"{f}: not UTF-8 text at row 3 (byte 0xe9 at column 14"), msg
        assert "save the file as UTF-8" in msg
    g = tmp_path / "bom.jsonl"  # a byte-order mark does not shift the row number
    g.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "\xff"}\r\n')
    assert fails_fast(lambda: read_examples(str(g), spec_for(g))).startswith(f"{g}: not UTF-8 text at row 2 ")


@pytest.mark.parametrize("fmt,table,problem", [
    ("text", {"text": [1, 2, 3]}, "column 'text' must be text, got int64 for the whole file"),
    ("text", {"text": [None, None]}, "column 'text' must be text, got null for the whole file"),
    ("text", {"body": ["a", "b"]}, "column 'text' is missing (the file has: body)"),
    ("prompt_completion", {"prompt": ["p"], "completion": [1.5]}, "column 'completion' must be text, got double"),
    ("chat", {"messages": ['[{"role": "user"}]']}, "column 'messages' must be a list of {role, content} messages, "
                                                   "got string for the whole file"),
    ("chat", {"messages": [[{"role": "user", "text": "hi"}]]}, "column 'messages' must be a list of {role, content}"),
])
def test_parquet_column_of_the_wrong_type_names_file_column_and_fix(tmp_path, fmt, table, problem):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table(table), f)
    option = {"text": "text_column", "chat": "messages_column"}.get(fmt, "completion_column")
    for mode in ("error", "skip"):  # no row of the file could pass: skip would silently drop the whole file
        msg = fails_fast(lambda m=mode: read_examples(str(f), spec_for(f, fmt, on_bad_rows=m)))
        assert msg.startswith(f"{f} row 0: {problem}"), msg
        assert f"set dataset.{option}" in msg


def test_parquet_text_column_types_that_read_as_strings(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode(),
                             "big": pa.array(["x", "y", "z"], pa.large_string())}), f)
    assert read_examples(str(f), spec_for(f))[0].column("text").to_pylist() == ["a", "b", "a"]
    assert read_examples(str(f), spec_for(f, text_column="big"))[0].column("text").to_pylist() == ["x", "y", "z"]
    # rows are still checked one by one within a well-typed file: a null string row is skipped and counted
    g = multi_group_parquet(tmp_path / "g.parquet")
    table = pq.read_table(g).to_pylist()
    table[14]["text"] = None
    pq.write_table(pa.Table.from_pylist(table), g, row_group_size=10)
    with pytest.raises(DataError, match=rf"^{g} row 14: column 'text' must be text, got NoneType"):
        read_examples(str(g), spec_for(g))
    kept, report = read_examples(str(g), spec_for(g, on_bad_rows="skip"))
    assert len(kept) == 29 and report.skipped == 1
    assert kept.column("source_row").to_pylist()[13:15] == [f"{g}:13", f"{g}:15"]


def test_prepare_fails_fast_on_a_corrupt_row_group(tmp_path, tokenizer_dir):
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(2).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    store = Store.open(str(tmp_path / "store"))
    for mode in ("error", "skip"):
        spec = job(f, **{"dataset.on_bad_rows": mode})
        msg = fails_fast(lambda s=spec: prepare(s, tokenizer_dir, store, parallel=False), seconds=10)
        assert msg.startswith(f"{f}: row group 2 of 3 (rows 20-29) is corrupt"), msg
    assert not list((tmp_path / "store").rglob("_SUCCESS"))  # nothing half-made is cached


def test_corrupt_cached_rows_are_a_data_error(tmp_path, tokenizer_dir):
    data = cache_data(tmp_path / "d.jsonl")
    prepared = prepare(job(data), tokenizer_dir, Store.open(str(tmp_path / "store")), parallel=False)
    cached = Path(prepared.train_uri)
    cached.write_bytes(cached.read_bytes()[:-20])
    msg = fails_fast(lambda: load_rows(prepared.train_uri))
    assert msg.startswith(f"{prepared.train_uri}: the cached tokenized rows are corrupt ("), msg
    assert f"delete {cached.parent}" in msg


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_permission_denied_is_named_also_as_root(tmp_path, monkeypatch, suffix):
    """The chmod case above cannot deny root; the same error, raised by the filesystem, here."""
    from fsspec.implementations.local import LocalFileSystem

    f = tmp_path / f"x.{suffix}"
    if suffix == "jsonl":
        write_jsonl(f, [{"text": "secret"}])
    else:
        multi_group_parquet(f)
    real_open = LocalFileSystem._open

    def denied(self, path, *a, **kw):
        if str(path).endswith(f.name):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(self, path, *a, **kw)

    monkeypatch.setattr(LocalFileSystem, "_open", denied)
    msg = fails_fast(lambda: read_examples(str(f), spec_for(f, on_bad_rows="skip")))
    assert msg == f"{f}: cannot read the file (Permission denied) — give the job read access to it, or remove it " \
                  "from dataset.uri", msg


@pytest.fixture
def memory_uri(tmp_path):
    """A directory on fsspec's in-memory filesystem, which lorafarm treats as an object store."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_object_store_files_are_named_by_full_uri(memory_uri, tmp_path):
    fs, root = memory_uri
    f = multi_group_parquet(tmp_path / "d.parquet")
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    fs.pipe_file(f"{root}/d.parquet", f.read_bytes())
    fs.pipe_file(f"{root}/e.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xe9"}\n')
    for name, expected in [("d.parquet", "row group 1 of 3 (rows 10-19) is corrupt ("),
                           ("e.jsonl", "not UTF-8 text at row 3 ")]:
        uri = f"memory://{root}/{name}"
        msg = fails_fast(lambda u=uri: read_examples(u, spec_for(u, on_bad_rows="skip")))
        assert msg.startswith(f"memory://{root}/{name}: {expected}"), msg


def test_a_storage_outage_mid_read_is_retried_not_called_corrupt(memory_uri, tmp_path, monkeypatch):
    import lorafarm.storage.retry as retry
    from lorafarm.errors import StorageError

    fs, root = memory_uri
    fs.pipe_file(f"{root}/d.parquet", multi_group_parquet(tmp_path / "d.parquet").read_bytes())
    uri = f"memory://{root}/d.parquet"
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.01)
    real = pq.ParquetFile.read_row_group
    failures = {"left": 1}

    def flaky(self, i, *a, **kw):
        if i == 1 and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(self, i, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", flaky)
    table, _ = read_examples(uri, spec_for(uri))  # one reset: retried, every row read
    assert len(table) == 30 and not failures["left"]
    failures["left"] = 99  # an outage that outlasts the retries: a StorageError, not a "corrupt" DataError
    monkeypatch.setenv(retry.RETRIES_ENV, "2")
    with pytest.raises(StorageError, match=rf"reading row group 1 of {uri}: object store still failing after 2"):
        read_examples(uri, spec_for(uri))


@pytest.mark.integration
def test_corrupt_and_truncated_parquet_on_s3(s3_server, s3_bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    f = multi_group_parquet(tmp_path / "d.parquet")
    good = f.read_bytes()
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    overwrite(f, chunk.dictionary_page_offset or chunk.data_page_offset, b"\xff" * 8)
    s3.put_object(Bucket=s3_bucket, Key="ds/corrupt.parquet", Body=f.read_bytes())
    s3.put_object(Bucket=s3_bucket, Key="ds/cut.parquet", Body=good[: len(good) // 2])
    for key, expected in [("corrupt.parquet", "row group 1 of 3 (rows 10-19) is corrupt ("),
                          ("cut.parquet", "not a readable Parquet file (")]:
        uri = f"s3://{s3_bucket}/ds/{key}"
        msg = fails_fast(lambda u=uri: read_examples(u, spec_for(u, on_bad_rows="skip")), seconds=20)
        assert msg.startswith(f"{uri}: {expected}"), msg
