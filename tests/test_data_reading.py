"""Reading examples: bad rows named by file, row and problem (or skipped and counted), Parquet
and JSON inputs, encodings, directories and globs."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    CHAT,
    spec_for,
    trained_text,
    write_jsonl,
)

from lorafarm.data import (
    encode,
    list_files,
    read_examples,
)
from lorafarm.errors import DataError

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


def test_parquet_chat_and_prompt_completion(tmp_path, tiny_tokenizer):
    f = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT, "extra": 1}, {"messages": CHAT[1:3], "extra": 2}]), f)
    table, report = read_examples(str(f), spec_for(f, "chat"))
    assert table.column("messages").to_pylist() == [CHAT, CHAT[1:3]] and report.skipped == 0
    assert trained_text(tiny_tokenizer, encode(table.to_pylist()[1], "chat", tiny_tokenizer, 128)) == "Ahoy.</s>"
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
