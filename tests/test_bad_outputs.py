"""Bad outputs, bad numbers, unbounded and binary input, through the real command line (issue 14).

Table-driven: each case runs ``lorafarm ...`` as a subprocess and asserts the exit code, one
``error:`` line naming the path/flag/field, no traceback, and that nothing was written (the
destination's listing — names, sizes, modes, mtimes — is unchanged, or absent stays absent).
With ``--force`` the destination holds exactly the new files with normal modes (0644/0755
under umask 022). The adapter is a tiny PEFT adapter on the built-in tiny-llama, published
with a manifest as a job would; no Ray and no training.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import publish_tiny_adapter

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lorafarm.cli.main"]
# the tiny-llama's tokenizer carries its chat template, so a merged model and an export both hold it
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors",
               "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
EXPORT_FILES = MODEL_FILES
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "lorafarm.json"}


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    out.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0",
               TOKENIZERS_PARALLELISM="false", LORAFARM_CACHE=os.environ.get("LORAFARM_CACHE",
                                                                              str(ROOT / ".cache" / "lorafarm")))
    out.update(extra)
    return out


def cli(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd or ROOT, env=env(**extra), text=True, capture_output=True,
                          timeout=300, preexec_fn=lambda: os.umask(0o022))


def listing(path: Path) -> list[tuple] | None:
    """Everything under ``path`` (names, sizes, modes, mtimes), or None when it does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return [(path.name, st.st_size, st.st_mode, st.st_mtime_ns)]
    out = []
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out.append((str(p.relative_to(path)), st.st_size, st.st_mode, st.st_mtime_ns))
    return out


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()} if path.parent.exists() else set()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A published tiny adapter, a binary file, a prompts file, a trace and a tenants file."""
    tmp = tmp_path_factory.mktemp("bad-outputs")
    adapter = publish_tiny_adapter(tmp, tmp / "store" / "demo" / "job-1" / "adapter",
                                   {"dataset": {"format": "text"}, "training": {"seq_len": 64}})
    (tmp / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 64)
    (tmp / "prompts.txt").write_text("Ahoy\n")
    (tmp / "tenants.yaml").write_text("tenants: {default: {weight: 1}}\n")
    (tmp / "big.jsonl").write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b" * 500}) + "\n")
    spec = (ROOT / "jobs/quickstart.yaml").read_text()
    (tmp / "big.yaml").write_text(spec.replace("uri: jobs/data/pirate_chat.jsonl", f"uri: {tmp / 'big.jsonl'}")
                                  .replace("format: chat", "format: text"))
    return {"tmp": tmp, "adapter": adapter}


def _file(tmp: Path, name: str) -> Path:
    p = tmp / name
    p.write_text("keep me\n")
    return p


def _nonempty(tmp: Path, name: str) -> Path:
    """A directory holding an adapter's files: merge/pull/export into it must not mix files."""
    d = tmp / name
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "notes.txt").write_text("mine\n")
    return d


# (id, how to make the destination (or None), argv with {adapter}/{dest}/{tmp}, exit code, text in the line)
CASES = [
    ("merge-onto-file", _file, ["merge", "{adapter}", "{dest}"], 2, "OUTDIR {dest}: is a file, not a directory"),
    ("merge-into-adapter-dir", _nonempty, ["merge", "{adapter}", "{dest}"], 2,
     "OUTDIR {dest}: directory is not empty (adapter_config.json, notes.txt) — give a new or empty directory, "
     "or pass --force"),
    ("merge-scale-inf", None, ["merge", "{adapter}", "{dest}", "--scale", "inf"], 2, "--scale inf: must be a finite"),
    ("merge-scale-nan", None, ["merge", "{adapter}", "{dest}", "--scale", "nan"], 2, "--scale nan: must be a finite"),
    ("merge-scale-overflow", None, ["merge", "{adapter}", "{dest}", "--scale", "1e308"], 2,
     "--scale 1e+308: the merged weights are not finite"),
    ("merge-parent-is-file", _file, ["merge", "{adapter}", "{dest}/sub"], 2, "cannot create it ({dest} is a file)"),
    ("pull-onto-file", _file, ["pull", "{adapter}", "{dest}"], 2, "DEST {dest}: is a file, not a directory"),
    ("pull-into-nonempty", _nonempty, ["pull", "{adapter}", "{dest}"], 2,
     "DEST {dest}: directory is not empty (adapter_config.json, notes.txt)"),
    ("pull-to-s3", None, ["pull", "{adapter}", "s3://bucket/x"], 2, "DEST s3://bucket/x: must be a local directory"),
    ("pull-from-gs", None, ["pull", "gs://bucket/adapter", "{dest}"], 2,
     "gs://bucket/adapter: gs:// is not supported — use a plain path, file:// or s3://"),
    ("export-onto-file", _file, ["models", "export", "tiny-llama", "{dest}"], 2, "DIR {dest}: is a file"),
    ("export-into-nonempty", _nonempty, ["models", "export", "tiny-llama", "{dest}"], 2,
     "DIR {dest}: directory is not empty"),
    ("try-binary-prompts", None, ["try", "{adapter}", "--prompts", "{tmp}/binary.bin"], 2,
     "--prompts: {tmp}/binary.bin: not UTF-8 text (byte 0: 0x89)"),
    ("try-prompts-dir", None, ["try", "{adapter}", "--prompts", "{tmp}"], 2, "--prompts: {tmp} is a directory"),
    ("try-temperature-inf", None, ["try", "{adapter}", "--prompt", "x", "--temperature", "inf"], 2,
     "--temperature inf: must be a finite number >= 0"),
    ("try-temperature-nan", None, ["try", "{adapter}", "--prompt", "x", "--temperature", "nan"], 2,
     "--temperature nan: must be a finite number >= 0"),
    ("try-scale-nan", None, ["try", "{adapter}", "--prompt", "x", "--scale", "1", "nan"], 2,
     "--scale nan: must be a finite number"),
    ("try-seed-negative", None, ["try", "{adapter}", "--prompt", "x", "--seed", "-1"], 2,
     "--seed -1: must be between 0 and 2**63-1"),
    ("try-from-gs", None, ["try", "gs://b/adapter", "--prompt", "x"], 2, "gs://b/adapter: gs:// is not supported"),
    ("eval-batch-zero", None, ["eval", "{adapter}", "--data", "{tmp}/big.jsonl", "--batch-size", "0"], 2,
     "--batch-size 0: must be >= 1"),
    ("simulate-gpus-nan", None, ["simulate", "--generate", "5", "--gpus", "nan", "--tenants", "{tmp}/tenants.yaml"],
     2, "--gpus: nan must be a finite number > 0"),
    ("simulate-gpus-inf", None, ["simulate", "--generate", "5", "--gpus", "inf", "--tenants", "{tmp}/tenants.yaml"],
     2, "--gpus: inf must be a finite number > 0"),
    ("simulate-binary-trace", None, ["simulate", "--trace", "{tmp}/binary.bin", "--gpus", "8", "--tenants",
                                     "{tmp}/tenants.yaml"], 2, "{tmp}/binary.bin: not UTF-8 text (byte 0)"),
    ("simulate-out-is-file", _file, ["simulate", "--generate", "5", "--gpus", "8", "--tenants", "{tmp}/tenants.yaml",
                                     "--out", "{dest}"], 2, "--out: {dest} is a file, not a directory"),
    ("top-interval-nan", None, ["top", "--interval", "nan"], 2, "--interval nan: must be a finite number of seconds"),
    ("top-interval-inf", None, ["top", "--interval", "inf"], 2, "--interval inf: must be a finite number of seconds"),
    ("plot-onto-dir.png", _nonempty, ["plot", "job-1", "-o", "{dest}"], 2, "-o {dest}: is a directory"),
    ("validate-row-too-large", None, ["validate", "{tmp}/big.yaml", "--set", "dataset.max_row_bytes=100"], 2,
     "{tmp}/big.jsonl: line 2 is 512 bytes, over dataset.max_row_bytes = 100 — split the example or raise the limit"),
]


@pytest.mark.parametrize("case,make,argv,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(work, case, make, argv, code, expected):
    tmp = work["tmp"]
    dest = tmp / case
    if make is not None:
        make(tmp, case)
    values = {"adapter": str(work["adapter"]), "dest": str(dest), "tmp": str(tmp)}
    before, around = listing(dest), siblings(dest)
    adapter_before = listing(work["adapter"])
    proc = cli(*[a.format(**values) for a in argv], LORAFARM_STORE=str(tmp / "store"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out and "unexpected" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert expected.format(**values) in " ".join(proc.stderr.split()), out
    assert listing(dest) == before, f"{dest} changed"
    assert siblings(dest) == around, f"something was written beside {dest}"
    assert listing(work["adapter"]) == adapter_before


def _modes_are_normal(root: Path) -> None:
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    for p in root.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


@pytest.mark.parametrize("command,expected", [
    (["merge", "{adapter}", "{dest}", "--force", "--scale", "0.5"], MODEL_FILES),
    (["pull", "{adapter}", "{dest}", "--force"], ADAPTER_FILES),
    (["models", "export", "tiny-llama", "{dest}", "--force"], EXPORT_FILES),
], ids=["merge", "pull", "export"])
def test_force_replaces_a_nonempty_directory_whole_with_normal_modes(work, command, expected):
    tmp = work["tmp"]
    dest = _nonempty(tmp, f"force-{command[0]}")
    proc = cli(*[a.format(adapter=work["adapter"], dest=dest) for a in command])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name for p in dest.iterdir()} == expected  # exactly the new files: none of the old ones
    _modes_are_normal(dest)
    assert not [n for n in siblings(dest) if ".lorafarm-" in n]  # no temp or old directory left behind


def test_into_a_new_nested_or_empty_directory_needs_no_force(work):
    tmp = work["tmp"]
    nested = tmp / "new" / "deeper" / "merged"
    proc = cli("merge", str(work["adapter"]), str(nested))
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in nested.iterdir()} == MODEL_FILES
    _modes_are_normal(nested)
    empty = tmp / "empty"
    empty.mkdir()
    proc = cli("pull", str(work["adapter"]), str(empty), "--json")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in empty.iterdir()} == ADAPTER_FILES


def test_a_failed_pull_leaves_neither_dest_nor_the_parents_it_made(work):
    """A corrupt adapter is refused (exit 1) after the destination's checks: nothing stays behind."""
    import shutil

    tmp = work["tmp"]
    bad = tmp / "corrupt"
    shutil.copytree(work["adapter"], bad)
    (bad / "adapter_model.safetensors").write_bytes(b"corrupt")
    proc = cli("pull", str(bad), str(tmp / "made" / "for" / "it"))
    assert proc.returncode == 1 and "incomplete or corrupt adapter" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp / "made").exists()


def test_try_with_a_job_id_and_no_store_never_joins_a_ray_cluster(work, monkeypatch, capsys):
    """Without --store/--tenant and without RAY_ADDRESS a job id is looked up in the default store:
    `ray.init("auto")` would join whatever cluster runs on this machine."""
    import lorafarm.scheduler.client as client
    from lorafarm.cli.main import main

    def no_ray(*a, **k):
        raise AssertionError("try connected to a Ray cluster")

    monkeypatch.setattr(client, "connect", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("LORAFARM_STORE", str(work["tmp"] / "store"))
    assert main(["try", "no-such-job", "--prompt", "x"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "job 'no-such-job' not found in store" in err and "pass --store, or set RAY_ADDRESS" in err, err
    from lorafarm.cli.use_cmds import _source

    assert _source("job-1", None, None) == str(work["adapter"])  # found in the default store, no Ray


def test_reading_a_huge_line_holds_a_bounded_window(tmp_path):
    """A 20 MB JSONL line over the limit is counted, never held: peak traced allocations stay near
    the limit plus one read chunk."""
    import tracemalloc

    from lorafarm.data import read_examples
    from lorafarm.errors import DataError
    from lorafarm.spec import DatasetSpec

    f = tmp_path / "d.jsonl"
    with f.open("w") as out:
        out.write(json.dumps({"text": "a"}) + "\n")
        out.write('{"text": "' + "x" * (20 << 20) + '"}\n')
        out.write(json.dumps({"text": "c"}) + "\n")
    spec = DatasetSpec(uri=str(f), max_row_bytes=1 << 20)
    with pytest.raises(DataError, match=r"line 2 is 20,971,532 bytes, over dataset.max_row_bytes = 1,048,576"):
        read_examples(str(f), spec)
    skip = spec.model_copy(update={"on_bad_rows": "skip"})
    read_examples(str(f), skip)  # imports what reading needs (pyarrow's pandas shim) outside the measurement
    tracemalloc.start()
    table, report = read_examples(str(f), skip)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert table.column("text").to_pylist() == ["a", "c"] and report.skipped == 1
    assert peak < 8 << 20, f"peak {peak:,} bytes"


def test_parquet_text_cells_and_json_array_elements_over_the_limit_are_named(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lorafarm.data import read, read_examples
    from lorafarm.errors import DataError
    from lorafarm.spec import DatasetSpec

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "é" * 300, "c"]}), p)
    spec = DatasetSpec(uri=str(p), max_row_bytes=100)
    with pytest.raises(DataError, match=r"d.parquet: row 1 is 600 bytes, over dataset.max_row_bytes = 100 — split"):
        read_examples(str(p), spec)
    table, report = read_examples(str(p), spec.model_copy(update={"on_bad_rows": "skip"}))
    assert table.column("text").to_pylist() == ["a", "c"] and report.skipped == 1

    j = tmp_path / "d.json"
    j.write_text(json.dumps([{"text": "a"}, {"text": "b" * 500}], indent=1))
    small = DatasetSpec(uri=str(j), max_row_bytes=100)
    with pytest.raises(DataError, match=r"d.json: element 1 is 517 bytes, over dataset.max_row_bytes = 100"):
        read_examples(str(j), small)
    assert read_examples(str(j), small.model_copy(update={"on_bad_rows": "skip"}))[1].skipped == 1
    monkeypatch.setattr(read, "CHUNK_BYTES", 16)  # an element longer than what is held is not even parsed
    with pytest.raises(DataError, match=r"d.json: element 1 \(from line 5\) does not end within "
                                        r"dataset.max_row_bytes = 100 bytes"):
        read_examples(str(j), small)
    assert read_examples(str(j), DatasetSpec(uri=str(j)))[0].column("text").to_pylist() == ["a", "b" * 500]
