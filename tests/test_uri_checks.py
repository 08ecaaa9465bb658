"""Every URI a spec names (dataset.uri, dataset.eval_uri, base_model as a path or URI) is checked
in canonical form against the tenant's store prefix and its ``allowed_uris``: a table of
spellings refused outside, accepted inside. (tests/test_trust.py has the store-prefix table for
dataset.uri; this adds eval data, globs, upper-case schemes, a symlinked store and allowed_uris.)"""

from __future__ import annotations

import os

import pytest
from scheduler_fakes import make_core, spec

from lorafarm.errors import SpecError
from lorafarm.scheduler.trust import trust_problems
from lorafarm.spec import load_tenants, validate_spec

FIELDS = ("dataset.uri", "dataset.eval_uri", "base_model")
ALLOWED = """
tenants:
  default: {{}}
  alice:
    allowed_uris: ["s3://datasets/alice", "{shared}/models/", "file://{shared}/data"]
"""


def _spec(field: str, uri: str, data: str | None = None) -> dict:
    s = spec(tenant="alice")
    if data:  # the other fields' data, inside what the test allows
        s["dataset"]["uri"] = data
    if field == "base_model":
        s["base_model"] = uri
    elif field == "dataset.eval_uri":
        s["dataset"].update(eval_uri=uri, eval_fraction=0.0)
    else:
        s["dataset"]["uri"] = uri
    return s


def _problems(field: str, uri: str, store: str, tenants: str | None = None, data: str | None = None) -> list[str]:
    return trust_problems(validate_spec(_spec(field, uri, data)), load_tenants(tenants), store)


@pytest.fixture
def tree(tmp_path):
    store = tmp_path / "store"
    for tenant in ("alice", "bob"):
        (store / tenant).mkdir(parents=True)
    (tmp_path / "shared" / "models").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(store, tmp_path / "store-link")
    os.symlink(store / "bob", tmp_path / "shared" / "models" / "bob-link")
    os.symlink(tmp_path / "secret", tmp_path / "shared" / "data" / "escape")
    return tmp_path


STORE_FOREIGN = ["{store}/alice/../bob/x.jsonl", "file://{store}/bob/x.jsonl", "FILE://{store}/bob/x.jsonl",
                 "{store}//bob//x.jsonl", "{store}/./bob/", "{tmp}/store-link/bob/x.jsonl",
                 "{tmp}/shared/models/bob-link/x.jsonl", "{store}/*/x.jsonl", "{tmp}/st*/bob/x.jsonl", "/*"]
STORE_OWN = ["{store}/alice/x.jsonl", "file://{store}/alice/", "{tmp}/store-link/alice/x.jsonl",
             "{store}/alice/*.jsonl", "{store}/bob/../alice/x.jsonl", "{tmp}/shared/x.jsonl"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("uri", STORE_FOREIGN)
def test_another_tenants_store_prefix_is_refused_however_spelled(tree, field, uri):
    uri = uri.format(store=tree / "store", tmp=tree)
    problems = _problems(field, uri, str(tree / "store"))
    assert problems == [f"{field}: {uri} is under another tenant's store prefix — tenants read only under "
                        f"{tree / 'store'}/alice/"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("uri", STORE_OWN)
def test_own_prefix_and_outside_paths_pass(tree, field, uri):
    assert _problems(field, uri.format(store=tree / "store", tmp=tree), str(tree / "store")) == []


S3_STORE = "s3://lake/lorafarm"
S3_FOREIGN = ["s3a://lake/lorafarm/bob/x", "S3://lake/lorafarm/bob/x", "s3://lake//lorafarm/bob/x",
              "s3://lake/lorafarm/alice/../bob/x", "s3://lake/lorafarm/bob/", "s3://lake/lora*/bob/x",
              "S3A://lake/./lorafarm/bob/x"]


@pytest.mark.parametrize("uri", S3_FOREIGN)
def test_s3_spellings_of_another_tenants_prefix_are_refused(uri):
    assert _problems("dataset.uri", uri, S3_STORE) and _problems("dataset.eval_uri", uri, "s3a://lake/lorafarm/")


@pytest.mark.parametrize("uri", ["s3a://lake/lorafarm/alice/x", "S3://lake/lorafarm/alice/", "s3://lake/other/x",
                                 "s3://lake/lorafarmx/bob/x"])
def test_s3_own_or_outside_pass(uri):
    assert _problems("dataset.uri", uri, S3_STORE) == []


ALLOWED_IN = ["s3a://datasets/alice/train.jsonl", "S3://datasets//alice/x/", "{shared}/models/base",
              "file://{shared}/models/./base", "{shared}/data/x.jsonl", "{shared}/data/*.jsonl", "{store}/alice/x"]
ALLOWED_OUT = ["s3://datasets/alicex/train.jsonl", "s3://datasets/alice/../bob/x", "{shared}/models/../../secret/x",
               "{shared}/data/escape/x.jsonl", "{shared}/*/x.jsonl", "/etc/passwd", "s3://elsewhere/x"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("uri", ALLOWED_IN)
def test_allowed_uris_accept_what_is_inside(tree, field, uri):
    tenants = ALLOWED.format(shared=tree / "shared")
    uri = uri.format(shared=tree / "shared", store=tree / "store")
    assert _problems(field, uri, str(tree / "store"), tenants, f"{tree}/shared/data/train.jsonl") == []


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("uri", ALLOWED_OUT)
def test_allowed_uris_refuse_what_is_outside_however_spelled(tree, field, uri):
    tenants = ALLOWED.format(shared=tree / "shared")
    uri = uri.format(shared=tree / "shared", store=tree / "store")
    problems = _problems(field, uri, str(tree / "store"), tenants, f"{tree}/shared/data/train.jsonl")
    assert len(problems) == 1 and problems[0].startswith(f"{field}: {uri} is outside tenant 'alice''s allowed_uris")


def test_builtin_and_hub_names_are_not_locations_and_other_tenants_are_unrestricted(tree):
    tenants = ALLOWED.format(shared=tree / "shared")
    for name in ("tiny-llama", "some-org/some-model"):
        assert _problems("base_model", name, str(tree / "store"), tenants, f"{tree}/shared/data/t.jsonl") == []
    s = spec(tenant="carol")  # no allowed_uris: anywhere outside other tenants' prefixes
    s["dataset"]["uri"] = "/etc/data.jsonl"
    assert trust_problems(validate_spec(s), load_tenants(tenants), str(tree / "store")) == []


def test_a_refused_uri_queues_nothing(tree):
    core = make_core(tree / "store", ALLOWED.format(shared=tree / "shared"))
    with pytest.raises(SpecError) as e:
        core.submit(_spec("dataset.eval_uri", f"{tree}/store-link/bob/eval.jsonl", f"{tree}/shared/data/t.jsonl"))
    assert e.value.problems == [f"dataset.eval_uri: {tree}/store-link/bob/eval.jsonl is under another tenant's "
                                f"store prefix — tenants read only under {tree}/store/alice/"]
    assert core.list() == []
    assert list((tree / "store" / "alice").iterdir()) == []  # no record, no spec written
