"""The shared test helpers themselves: a missing tool skips a test locally and fails it in CI."""

from __future__ import annotations

import pytest
from helpers import free_port, quickstart_spec, require_binary, require_module, wait_for


def test_a_missing_binary_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-lf is not installed"):
        require_binary("no-such-tool-lf", package="lf-tools")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        require_binary("no-such-tool-lf", package="lf-tools")
    assert require_binary("sh", package="dash").endswith("/sh")


def test_a_missing_module_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_module("no_such_module_lf")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_lf"):
        require_module("no_such_module_lf")
    assert require_module("json").dumps([]) == "[]"


def test_wait_for_returns_the_value_or_names_what_it_waited_for():
    calls = iter([0, None, "ready"])
    assert wait_for(lambda: next(calls), timeout=5, what="x", interval=0) == "ready"
    with pytest.raises(AssertionError, match="waiting for the moon"):
        wait_for(lambda: False, timeout=0.05, what="the moon", interval=0.01)


def test_free_port_is_bindable_and_quickstart_spec_overrides_sections(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
    spec = quickstart_spec("acme", "n", tmp_path / "d.jsonl", training={"max_steps": 3})
    assert (spec["tenant"], spec["name"], spec["dataset"]["uri"]) == ("acme", "n", str(tmp_path / "d.jsonl"))
    assert spec["training"]["max_steps"] == 3 and spec["dataset"]["eval_fraction"] == 0.0
    assert "learning_rate" in spec["training"]  # the rest of the section stays
