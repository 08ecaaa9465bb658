"""`try`/`eval` never run a base model's own code on an adapter manifest's word: a manifest that
says ``trust_remote_code`` is refused unless the user passes ``--trust-remote-code``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, publish_tiny_adapter

from lorafarm.errors import AdapterError


@pytest.fixture(scope="module")
def remote_code_adapter(tmp_path_factory):
    """A real PEFT adapter on tiny-llama whose manifest claims its job trusted remote code."""
    tmp = tmp_path_factory.mktemp("trust")
    return publish_tiny_adapter(tmp, tmp / "store" / "mallory" / "job-1" / "adapter", {
        "trust_remote_code": True, "dataset": {"format": "text"}, "training": {"seq_len": 64}})


def test_a_manifest_asking_for_remote_code_is_refused_without_the_flag(remote_code_adapter, tmp_path):
    from lorafarm.use.load import open_session

    with pytest.raises(AdapterError, match="trained with trust_remote_code.*pass --trust-remote-code"):
        open_session([str(remote_code_adapter)], tmp_path / "a")
    session = open_session([str(remote_code_adapter)], tmp_path / "b", trust_remote_code=True)
    assert [a.label for a in session.adapters] and session.model is not None


def test_try_says_so_in_one_line(remote_code_adapter):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "lorafarm.cli.main", "try", str(remote_code_adapter),
                          "--prompt", "Ahoy"], cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "pass --trust-remote-code" in out.stderr and "mallory" not in out.stdout


def test_merge_refuses_a_manifests_remote_code_unless_the_flag_is_given(remote_code_adapter, tmp_path):
    from lorafarm.api import merge

    with pytest.raises(AdapterError, match="trained with trust_remote_code.*pass --trust-remote-code"):
        merge(str(remote_code_adapter), str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    out = merge(str(remote_code_adapter), str(tmp_path / "merged"), trust_remote_code=True)
    assert (out / "config.json").exists()


def test_pull_only_copies_files_and_never_loads_the_base(remote_code_adapter, tmp_path, monkeypatch):
    import lorafarm.model.load as load
    from lorafarm.api import pull

    def refuse(*_a, **_k):
        raise AssertionError("pull loaded a model")

    monkeypatch.setattr(load, "load_base", refuse)
    monkeypatch.setattr(load, "load_tokenizer", refuse)
    manifest = pull(str(remote_code_adapter), tmp_path / "copy")
    assert manifest["spec"]["trust_remote_code"] is True
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (tmp_path / "copy").iterdir()}
