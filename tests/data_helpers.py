"""Plain helpers the data tests share: sample rows, spec builders, files to corrupt, and
`fails_fast`, which turns a hang into a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lorafarm.data import IGNORE
from lorafarm.errors import DataError
from lorafarm.spec import DatasetSpec, JobSpec, validate_spec

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


def trained_text(tok, enc) -> str:
    """The text of the tokens an encoded example trains on (its labels that are not IGNORE)."""
    return tok.decode([x for x in enc.labels if x != IGNORE])


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def spec_for(path, fmt="text", **kw) -> DatasetSpec:
    return DatasetSpec(uri=str(path), format=fmt, **kw)


def cache_spec(uri, **over) -> JobSpec:
    """A small text job over ``uri`` for the cache tests; ``over`` sets dotted paths
    (``**{"training.seq_len": 64}``)."""
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
