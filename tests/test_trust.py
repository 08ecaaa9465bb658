"""A tenant reads only under its own store prefix, however a URI spells another tenant's path.

Each spelling below reached bob's data through the old string-prefix check; every one must now be
refused, and the tenant's own paths (and paths outside the store) must still pass."""

from __future__ import annotations

import os

import pytest
from scheduler_fakes import make_core, spec

from lorafarm.errors import SpecError
from lorafarm.scheduler.trust import trust_problems
from lorafarm.spec import load_tenants, validate_spec
from lorafarm.storage import canonical, is_under


def _problems(store_root: str, uri: str, field: str = "dataset.uri") -> list[str]:
    s = spec(tenant="alice")
    if field == "base_model":
        s["base_model"] = uri
    else:
        s["dataset"]["uri"] = uri
    return trust_problems(validate_spec(s), load_tenants(None), store_root)


@pytest.fixture
def local_store(tmp_path):
    root = tmp_path / "store"
    for tenant in ("alice", "bob"):
        (root / tenant).mkdir(parents=True)
        (root / tenant / "data.jsonl").write_text("{}\n")
    os.symlink(root / "bob", root / "alice" / "link-to-bob")
    return str(root)


LOCAL_FOREIGN = [
    "{root}/bob/data.jsonl",
    "{root}/alice/../bob/data.jsonl",
    "{root}/alice/./../bob/data.jsonl",
    "{root}//bob//data.jsonl",
    "file://{root}/bob/data.jsonl",
    "file://{root}/alice/../bob/data.jsonl",
    "{root}/alice/link-to-bob/data.jsonl",   # a symlink inside alice's prefix into bob's
    "{root}/_jobs/someone.json",             # the scheduler's own records are nobody's data
    "{root}/bob",
]


@pytest.mark.parametrize("template", LOCAL_FOREIGN)
@pytest.mark.parametrize("field", ["dataset.uri", "base_model"])
def test_every_local_spelling_of_another_tenants_path_is_refused(local_store, template, field):
    problems = _problems(local_store, template.format(root=local_store), field)
    assert len(problems) == 1 and problems[0].startswith(f"{field}: ")
    assert "under another tenant's store prefix" in problems[0] and f"{local_store}/alice/" in problems[0]


@pytest.mark.parametrize("template", ["{root}/alice/data.jsonl", "file://{root}/alice/data.jsonl",
                                      "{root}/bob/../alice/data.jsonl", "{root}/alice/sub/../data.jsonl"])
def test_the_tenants_own_paths_pass(local_store, template):
    assert _problems(local_store, template.format(root=local_store)) == []


def test_paths_outside_the_store_pass(local_store, tmp_path):
    (tmp_path / "elsewhere.jsonl").write_text("{}\n")
    assert _problems(local_store, str(tmp_path / "elsewhere.jsonl")) == []
    assert _problems(local_store, local_store + "-bob/data.jsonl") == []  # a sibling sharing the prefix text


S3_ROOT = "s3://bucket/prefix"
S3_FOREIGN = [
    "s3://bucket/prefix/bob/data.jsonl",
    "S3://bucket/prefix/bob/data.jsonl",
    "s3a://bucket/prefix/bob/data.jsonl",
    "S3A://bucket/prefix/bob/data.jsonl",
    "s3://bucket/prefix/alice/../bob/data.jsonl",
    "s3://bucket//prefix//bob/data.jsonl",
    "s3://bucket/prefix/./bob/data.jsonl",
]


@pytest.mark.parametrize("uri", S3_FOREIGN)
@pytest.mark.parametrize("root", [S3_ROOT, "S3A://bucket/prefix/", "s3://bucket//prefix"])
def test_every_s3_spelling_of_another_tenants_path_is_refused(uri, root):
    problems = _problems(root, uri)
    assert len(problems) == 1 and "under another tenant's store prefix" in problems[0]


@pytest.mark.parametrize("uri", ["s3://bucket/prefix/alice/data.jsonl", "s3a://bucket/prefix/alice/x.jsonl",
                                 "s3://bucket/other/bob/data.jsonl", "s3://bucket2/prefix/bob/data.jsonl",
                                 "s3://bucket/prefix-bob/data.jsonl"])
def test_own_and_outside_s3_paths_pass(uri):
    assert _problems(S3_ROOT, uri) == []


def test_canonical_forms():
    assert canonical("S3A://b/p//x/./y/../z") == ("s3", "b/p/x/z")
    assert canonical("file:///tmp/a/../b") == canonical("/tmp/b")
    assert is_under("s3://b/p", "s3a://b/p/") and not is_under("s3://b/px", "s3://b/p")


def test_the_scheduler_refuses_at_submit_and_queues_nothing(tmp_path):
    core = make_core(tmp_path / "store")
    (tmp_path / "store" / "bob").mkdir(parents=True)
    bad = spec(tenant="alice")
    bad["dataset"]["uri"] = f"file://{core.store.root}/alice/../bob/data.jsonl"
    with pytest.raises(SpecError, match="dataset.uri: .* under another tenant's store prefix"):
        core.submit(bad)
    assert core.list() == []
