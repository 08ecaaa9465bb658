"""End to end with S3 (moto's server on 127.0.0.1): base model, dataset and store on S3,
``lorafarm run`` and ``lorafarm pull`` as real processes, and pull refusing broken adapters."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lorafarm.cli.main import main as cli_main
from lorafarm.storage import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``lorafarm ARGS`` as its own process, bounded by ``timeout`` (a hang fails with its output)."""
    try:
        return subprocess.run([sys.executable, "-m", "lorafarm.cli.main", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"`lorafarm {args[0]}` still running after {timeout:.0f} s; stderr tail:\n{err[-3000:]}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3(s3_server):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server)


def s3_objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """{key relative to prefix: bytes} of every object under ``prefix``."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) :]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny-llama"
    assert cli_main(["models", "export", "tiny-llama", str(out)]) == 0  # the command, in this process
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    return out


@pytest.fixture(scope="module")
def s3_run(s3_server, s3, base_dir, tmp_path_factory):
    """One real ``lorafarm run`` whose base model, dataset (a directory holding a JSONL and a
    Parquet file) and store are all on S3; a fresh local cache, so the base is copied from S3."""
    import uuid

    bucket = f"lorafarm-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for f in base_dir.iterdir():
        s3.put_object(Bucket=bucket, Key=f"models/tiny-llama/{f.name}", Body=f.read_bytes())
    lines = (ROOT / "jobs/data/pirate_chat.jsonl").read_text().splitlines()[:120]
    half = len(lines) // 2
    s3.put_object(Bucket=bucket, Key="data/part-0.jsonl", Body="\n".join(lines[:half]).encode() + b"\n")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([json.loads(x) for x in lines[half:]]), buf)
    s3.put_object(Bucket=bucket, Key="data/part-1.parquet", Body=buf.getvalue())
    s3.put_object(Bucket=bucket, Key="data/README.md", Body=b"not data")

    cache = tmp_path_factory.mktemp("cache")
    store = f"s3://{bucket}/store"
    proc = cli(
        "run", str(ROOT / "jobs/quickstart.yaml"), "--json", "--store", store,
        "--set", f"base_model=s3://{bucket}/models/tiny-llama", "--set", f"dataset.uri=s3://{bucket}/data",
        "--set", "training.max_steps=2", "--set", "training.warmup_steps=1", "--set", "training.eval_every_steps=0",
        "--set", "resources.workers=1", "--set", "training.seq_len=96", "--set", "training.global_batch_size=8",
        env={"LORAFARM_CACHE": str(cache), "LORAFARM_STORE": str(cache / "unused-store")}, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"bucket": bucket, "store": store, "result": result, "cache": cache, "lines": len(lines)}


def test_run_with_everything_on_s3_publishes_a_verified_adapter(s3_run, s3):
    r, bucket = s3_run["result"], s3_run["bucket"]
    assert r["state"] == "SUCCEEDED" and r["tenant"] == "demo" and r["reason"] is None
    assert r["metrics"]["steps"] == 2 and r["metrics"]["final_train_loss"] > 0
    prefix = f"store/demo/{r['job_id']}/"
    assert r["adapter_uri"] == f"s3://{bucket}/{prefix}adapter"
    objects = s3_objects(s3, bucket, prefix)
    assert {"spec.yaml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            f"adapter/{MANIFEST}"} <= set(objects)
    manifest = json.loads(objects[f"adapter/{MANIFEST}"])
    assert set(manifest["files"]) == set(ADAPTER_FILES)
    for name, meta in manifest["files"].items():  # what S3 holds is what the manifest vouches for
        assert meta["sha256"] == sha256(objects[f"adapter/{name}"]) and meta["size"] == len(objects[f"adapter/{name}"])
    assert manifest["base_model"] == f"s3://{bucket}/models/tiny-llama"
    # the base was copied once from S3 into the (fresh) local cache
    copies = list((s3_run["cache"] / "models").glob("remote-*"))
    assert len(copies) == 1 and (copies[0] / "model.safetensors").exists()
    # every example of both files was read (the README was ignored), and the tokenized rows were cached on S3
    cached = s3_objects(s3, bucket, "store/demo/_cache/tokenized/")
    stats = json.loads(next(v for k, v in cached.items() if k.endswith("/stats.json")))
    # the eval split is held out per row by a seeded hash (no pass over the data first): ~10%, not exactly 10%
    assert stats["examples"] + stats["eval_examples_read"] == s3_run["lines"] and stats["skipped_bad_rows"] == 0
    assert 0 < stats["eval_examples"] <= stats["eval_examples_read"] <= 0.25 * s3_run["lines"]
    assert stats["rows"] == stats["examples"] - stats["all_masked_dropped"]
    assert any(k.endswith("/_SUCCESS") for k in cached)
    assert any(k.startswith(f"{k.split('/')[0]}/train/part-") and k.endswith(".parquet") for k in cached)


def test_pull_from_s3_then_peft_loads_it_on_the_exported_base(s3_run, s3, base_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    r = s3_run["result"]
    dest = tmp_path / "pulled"
    proc = cli("pull", r["job_id"], str(dest), "--store", s3_run["store"], "--tenant", "demo", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["adapter_uri"] == r["adapter_uri"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([*ADAPTER_FILES, MANIFEST])
    manifest = json.loads((dest / MANIFEST).read_text())
    for name, meta in manifest["files"].items():
        data = (dest / name).read_bytes()
        assert sha256(data) == meta["sha256"] and len(data) == meta["size"]

    tensors = load_file(str(dest / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 7 * 4  # lora_A + lora_B on all-linear (7 projections) in 4 layers
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(dest)).eval()
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    assert any(v.abs().max() > 0 for k, v in tensors.items() if "lora_B" in k)  # trained, not the zero init
    ids = torch.randint(4, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()(ids).logits
    torch.testing.assert_close(plain, base)
    assert (adapted - base).abs().max() > 1e-4


def copy_adapter(s3, bucket: str, src: str, dst: str, skip: tuple[str, ...] = ()) -> str:
    for name, data in s3_objects(s3, bucket, src + "/").items():
        if name not in skip:
            s3.put_object(Bucket=bucket, Key=f"{dst}/{name}", Body=data)
    return f"s3://{bucket}/{dst}"


def adapter_key(s3_run) -> str:
    return s3_run["result"]["adapter_uri"].split("/", 3)[3]


def test_pull_refuses_an_adapter_without_manifest(s3_run, s3, tmp_path):
    """The real process: exit 1, one clear line, no traceback, nothing pulled."""
    uri = copy_adapter(s3, s3_run["bucket"], adapter_key(s3_run), "broken/no-manifest", skip=(MANIFEST,))
    dest = tmp_path / "out"
    proc = cli("pull", uri, str(dest))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"{uri}: no adapter here (no {MANIFEST}: missing, or publishing did not finish)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (dest / MANIFEST).exists()


@pytest.mark.parametrize("damage,expected", [
    ("altered", "incomplete or corrupt adapter (adapter_model.safetensors: sha256/size differ from the manifest)"),
    ("truncated", "incomplete or corrupt adapter (adapter_model.safetensors: sha256/size differ from the manifest)"),
    ("missing", "incomplete or corrupt adapter (adapter_config.json: missing)"),
    ("unlisted", "manifest lists no adapter_model.safetensors — not a complete adapter"),
    ("corrupt-manifest", f"{MANIFEST}: corrupt manifest"),
])
def test_pull_refuses_an_incomplete_or_altered_adapter(s3_run, s3, tmp_path, capsys, damage, expected):
    bucket, key = s3_run["bucket"], f"broken/{damage}"
    uri = copy_adapter(s3, bucket, adapter_key(s3_run), key)
    weights = s3.get_object(Bucket=bucket, Key=f"{key}/adapter_model.safetensors")["Body"].read()
    if damage == "altered":  # same size, one byte flipped
        s3.put_object(Bucket=bucket, Key=f"{key}/adapter_model.safetensors",
                      Body=weights[:-1] + bytes([weights[-1] ^ 1]))
    elif damage == "truncated":
        s3.put_object(Bucket=bucket, Key=f"{key}/adapter_model.safetensors", Body=weights[: len(weights) // 2])
    elif damage == "missing":
        s3.delete_object(Bucket=bucket, Key=f"{key}/adapter_config.json")
    elif damage == "unlisted":  # a manifest that vouches for less than a whole adapter
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{key}/{MANIFEST}")["Body"].read())
        del manifest["files"]["adapter_model.safetensors"]
        s3.put_object(Bucket=bucket, Key=f"{key}/{MANIFEST}", Body=json.dumps(manifest).encode())
    else:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{key}/{MANIFEST}")["Body"].read())
        del manifest["files"]["adapter_config.json"]["sha256"]
        s3.put_object(Bucket=bucket, Key=f"{key}/{MANIFEST}", Body=json.dumps(manifest).encode())
    dest = tmp_path / "out"
    capsys.readouterr()
    rc = cli_main(["pull", uri, str(dest)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert expected in " ".join(err.split()), err
    assert "unexpected" not in err and not (dest / MANIFEST).exists()
    # the intact original still pulls
    assert cli_main(["pull", s3_run["result"]["adapter_uri"], str(tmp_path / "good")]) == 0
    assert (tmp_path / "good" / MANIFEST).exists()


def test_pull_refuses_a_manifest_naming_files_outside_the_adapter(tmp_path, capsys):
    """Names come from the manifest; a crafted one must not make pull write outside DEST."""
    src = tmp_path / "store" / "adapter"
    src.mkdir(parents=True)
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x", "../evil.sh": b"echo pwned"}
    (tmp_path / "store" / "evil.sh").write_bytes(files["../evil.sh"])
    for name, data in files.items():
        if "/" not in name:
            (src / name).write_bytes(data)
    manifest = {"files": {n: {"sha256": sha256(d), "size": len(d)} for n, d in files.items()}}
    (src / MANIFEST).write_text(json.dumps(manifest))
    dest = tmp_path / "a" / "b"
    rc = cli_main(["pull", str(src), str(dest)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 1 and "manifest names files outside the adapter (../evil.sh)" in err, err
    assert not (tmp_path / "a" / "evil.sh").exists() and not (dest / MANIFEST).exists()


def test_dataset_reading_on_s3_directory_glob_and_bad_rows(s3, s3_bucket):
    from lorafarm.data import fingerprint, list_files, read_examples
    from lorafarm.errors import DataError
    from lorafarm.spec import DatasetSpec

    b = s3_bucket
    s3.put_object(Bucket=b, Key="ds/b.jsonl", Body=b'{"text": "b1"}\n\n{"text": ""}\n')
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["a1", "a2"]}), buf)
    s3.put_object(Bucket=b, Key="ds/a.parquet", Body=buf.getvalue())
    s3.put_object(Bucket=b, Key="ds/notes.txt", Body=b"x")
    s3.put_object(Bucket=b, Key="ds/sub/c.jsonl", Body=b'{"text": "nested"}\n')
    assert list_files(f"s3://{b}/ds") == [f"s3://{b}/ds/a.parquet", f"s3://{b}/ds/b.jsonl"]
    assert list_files(f"s3://{b}/ds/") == list_files(f"s3://{b}/ds")
    assert list_files(f"s3://{b}/ds/*.jsonl") == [f"s3://{b}/ds/b.jsonl"]
    assert list_files(f"s3://{b}/ds/**/*.jsonl") == [f"s3://{b}/ds/b.jsonl", f"s3://{b}/ds/sub/c.jsonl"]
    assert list_files(f"s3://{b}/ds/b.jsonl") == [f"s3://{b}/ds/b.jsonl"]
    with pytest.raises(DataError, match=rf"^s3://{b}/ds/b\.jsonl row 3: column 'text' is empty"):
        read_examples(f"s3://{b}/ds", DatasetSpec(uri=f"s3://{b}/ds"))
    table, report = read_examples(f"s3://{b}/ds", DatasetSpec(uri=f"s3://{b}/ds", on_bad_rows="skip"))
    assert table.column("text").to_pylist() == ["a1", "a2", "b1"] and report.skipped == 1
    assert table.column("source_row").to_pylist()[2] == f"s3://{b}/ds/b.jsonl:1"
    with pytest.raises(DataError, match="not found"):
        list_files(f"s3://{b}/nothing-here")
    before = fingerprint(f"s3://{b}/ds")
    assert fingerprint(f"s3://{b}/ds") == before
    s3.put_object(Bucket=b, Key="ds/b.jsonl", Body=b'{"text": "b9"}\n\n{"text": ""}\n')  # same size, new bytes
    assert fingerprint(f"s3://{b}/ds") != before
