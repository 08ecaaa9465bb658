"""``lorafarm validate``'s success path: a runnable spec on the built-in tiny model reports its
counts, steps per epoch and a rough ETA as numbers (the failure paths are in test_spec.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT, quickstart_spec, write_small_chat_dataset

from lorafarm.preflight import preflight
from lorafarm.spec import validate_spec

ROWS = 48
COUNTS = ("examples", "bad_rows_skipped", "base_params", "adapted_modules", "lora_params", "sample_tokens",
          "tokens", "label_tokens", "all_masked_examples", "truncated_examples", "steps_per_epoch", "total_steps",
          "eta_seconds_rough")


@pytest.fixture()
def chat_file(tmp_path):
    return write_small_chat_dataset(tmp_path / "chat.jsonl", rows=ROWS)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def test_a_quickstart_spec_is_runnable_with_every_count(chat_file):
    spec = validate_spec(quickstart_spec("demo", "preflight", chat_file, training={"max_steps": 6, "eval_every_steps": 3}))
    report = preflight(spec)
    assert report["tenant"] == "demo" and report["name"] == "preflight"
    for key in COUNTS:
        assert _is_count(report[key]), f"{key}: {report[key]!r} is not a count"
    assert report["examples"] == ROWS and report["bad_rows_skipped"] == 0 and report["estimated"] is False
    assert 0 < report["label_tokens"] < report["tokens"]  # chat: loss on assistant turns only
    assert report["steps_per_epoch"] == (ROWS - report["all_masked_examples"]) // spec.training.global_batch_size
    assert report["total_steps"] == 6
    assert report["adapted_modules"] > 0 and report["lora_params"] > 0  # all-linear found layers to adapt


def _text_file(path, rows: int):
    path.write_text("".join(json.dumps({"text": f"arr, matey number {i}, hoist the sails! " * 3}) + "\n"
                            for i in range(rows)))
    return path


def test_epochs_packing_and_an_eval_file(tmp_path):
    text, held_out = _text_file(tmp_path / "text.jsonl", 64), _text_file(tmp_path / "eval.jsonl", 10)
    raw = quickstart_spec("demo", "packed", text, training={"max_steps": None, "epochs": 2.0, "packing": True,
                                                             "global_batch_size": 4, "micro_batch_size": 2,
                                                             "warmup_steps": 0, "eval_every_steps": 0,
                                                             "seq_len": 64},
                          resources={"workers": 1})
    raw["dataset"] = {"uri": str(text), "format": "text", "eval_uri": str(held_out)}
    report = preflight(validate_spec(raw))
    rows = math.ceil(report["tokens"] / 64)  # packing: rows of seq_len tokens
    assert report["steps_per_epoch"] == rows // 4
    assert report["total_steps"] == math.ceil(2.0 * report["steps_per_epoch"])
    assert report["examples"] == 64 and report["eval_examples"] == 10
    assert _is_count(report["eta_seconds_rough"])


def test_validate_json_cli_prints_the_report_and_starts_no_ray(chat_file, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps(quickstart_spec("demo", "cli", chat_file, training={"max_steps": 6, "eval_every_steps": 3})))
    code = ("import json, sys; from lorafarm.cli.main import main; "
            f"rc = main(['validate', {str(spec)!r}, '--json']); "
            "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    *lines, last = proc.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 0, "ray": False}, proc.stderr
    report = json.loads(lines[-1])
    assert report["examples"] == ROWS and report["total_steps"] == 6 and _is_count(report["steps_per_epoch"])
