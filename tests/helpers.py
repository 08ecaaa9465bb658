"""Plain helpers the tests share (fixtures live in conftest.py): ports, polling with a deadline,
the quickstart spec cut down for a test, and tools a test needs — skipped locally when missing,
a failure in CI, so that CI never goes green without them."""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free port in 20000-32767: above Ray's worker ports, below the kernel's ephemeral range,
    so that no other process is handed it between our check and the caller's bind."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, describe=None):
    """Poll ``predicate`` until it returns a truthy value (returned); fail naming ``what`` (and what
    ``describe()`` returns, the state that explains a miss) at the deadline."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    seen = f"; {describe()!r}" if describe is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}{seen})")


def quickstart_spec(tenant: str, name: str, data: Path | str, **sections: dict[str, Any]) -> dict:
    """jobs/quickstart.yaml as a dict for ``tenant``/``name`` reading ``data`` with no eval split;
    each keyword updates one section, e.g. ``training={"max_steps": 2}``."""
    import yaml

    spec = yaml.safe_load((ROOT / "jobs/quickstart.yaml").read_text())
    spec.update(tenant=tenant, name=name)
    spec["dataset"].update(uri=str(data), eval_fraction=0.0)
    for section, values in sections.items():
        spec[section].update(values)
    return spec


def with_field(spec: dict, dotted: str, value: Any) -> dict:
    """A deep copy of ``spec`` with the field at ``dotted`` (e.g. ``lora.r``) set to ``value``."""
    spec = json.loads(json.dumps(spec))
    *parents, leaf = dotted.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return spec


def publish_tiny_adapter(tmp: Path, adapter: Path, spec: dict[str, Any]) -> Path:
    """A real, untrained-but-nonzero PEFT adapter on tiny-llama published at ``adapter`` with a
    manifest carrying ``spec`` (no Ray, no training), for tests of what reads adapters."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from lorafarm.adapter.save import publish, save_peft
    from lorafarm.model import load_base, resolve_base

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_base(resolve_base("tiny-llama")), config)
    local = save_peft(tmp / "local", get_peft_model_state_dict(model), config, "tiny-llama")
    publish(local, str(adapter), {"base_model": "tiny-llama", "job_id": adapter.parent.name, "spec": spec})
    return adapter


def write_small_chat_dataset(path: Path, rows: int = 48) -> Path:
    """The first ``rows`` conversations of jobs/data/pirate_chat.jsonl: enough for a few steps."""
    lines = (ROOT / "jobs/data/pirate_chat.jsonl").read_text().splitlines()[:rows]
    path.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in lines))
    return path


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str) -> NoReturn:
    message = f"{what}; scripts/setup.sh installs it"
    if in_ci():
        pytest.fail(f"{message} — CI must run this test, not skip it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_binary(name: str, package: str) -> str:
    """The path of executable ``name`` (PATH, then /usr/bin); skips when missing, fails under CI."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        _missing(f"{name} is not installed (Debian package `{package}`)")
    return found


def require_module(name: str) -> ModuleType:
    """``pytest.importorskip`` that fails under CI instead of skipping."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python package {name} is not installed (lorafarm's [test] extra)")
