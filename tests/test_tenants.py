"""The tenants file: every problem at once as ``field.path: problem — fix``, and its look-ups."""

from __future__ import annotations

import re

import pytest

from lorafarm.tenants import TenantsConfig, TenantsError, load_tenants, validate_tenants

LINE = re.compile(r"^[\w.\[\]/-]+: .+ — .+$")  # field.path: what is wrong — how to fix

GOOD = """
priority_classes: {low: 0, normal: 100, high: 1000}
default_priority: normal
unknown_tenants: default
policy: {aging_per_hour: 50, backfill: true, preemption: true}
tenants:
  default: {weight: 1, quota: {workers: 8, gpus: 8, cpus: 64, max_queued: 100}}
  acme:
    weight: 2
    quota: {gpus: 16}
    priorities: [low, normal]
    default_priority: low
    allow_trust_remote_code: true
"""


def problems(text: str) -> list[str]:
    with pytest.raises(TenantsError) as err:
        load_tenants(text)
    for line in err.value.problems:
        assert LINE.match(line), f"not `field.path: problem — fix`: {line!r}"
    return err.value.problems


def test_a_good_file_loads_with_every_field():
    t = load_tenants(GOOD)
    assert t.policy.aging_per_hour == 50 and t.policy.preemption
    assert t.weight("acme") == 2 and t.quota("acme").gpus == 16 and t.quota("acme").workers is None
    assert t.allowed_priorities("acme") == {"low", "normal"}
    assert t.default_priority_for("acme") == "low" and t.default_priority_for("other") == "normal"
    assert t.allows_remote_code("acme") and not t.allows_remote_code("other")
    assert t.max_queued("other") == 100
    assert t.tenant_names() == ["acme"]


def test_unlisted_tenants_use_the_default_entry():
    t = load_tenants(GOOD)
    assert t.for_tenant("zed") is t.tenants["default"]
    assert t.entry_path("zed") == "tenants.default" and t.entry_path("acme") == "tenants.acme"
    assert t.quota_dict("zed") == {"workers": 8, "gpus": 8, "cpus": 64, "max_queued": 100}


def test_reject_mode_refuses_unlisted_tenants():
    t = load_tenants("unknown_tenants: reject\ntenants: {acme: {weight: 1}}")
    assert t.for_tenant("zed") is None and t.for_tenant("acme") is not None
    assert not t.allows_remote_code("zed")


def test_no_file_gives_the_builtin_config():
    t = load_tenants(None)
    assert isinstance(t, TenantsConfig)
    assert t.priority_classes == {"low": 0, "normal": 100, "high": 1000}
    assert t.weight("anyone") == 1 and t.quota("anyone").gpus is None


def test_priority_value_falls_back_to_the_default_class():
    t = load_tenants(GOOD)
    assert t.priority_value("high") == 1000 and t.priority_value("gone") == 100


def test_every_problem_is_reported_at_once():
    found = problems("""
priority_classes: {low: 0, normal: x}
default_priority: urgent
policy: {aging_per_hour: -1, backfil: true}
tenants:
  acme: {weight: 0, quota: {gpus: -2, workerz: 3}, priorities: [low, vip], default_priority: high}
  Bad_Name: {weight: 1}
""")
    expected = [
        "priority_classes.normal: 'x' is not an integer",
        "policy.aging_per_hour: -1 is out of range",
        "policy.backfil: unknown field — did you mean `backfill`?",
        "tenants.acme.weight: 0 is out of range — use a value > 0",
        "tenants.acme.quota.gpus: -2 is out of range — use a value >= 0",
        "tenants.acme.quota.workerz: unknown field — did you mean `workers`?",
        "tenants.Bad_Name: 'Bad_Name' is not a valid tenant name",
        "default_priority: 'urgent' is not a priority class — use one of low, normal",
        "tenants.acme.priorities[1]: 'vip' is not a priority class",
        "tenants.acme.default_priority: 'high' is not a priority class",
        "tenants.default: missing — add a `default` entry",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), f"missing {start!r} in {found}"
    assert len(found) == len(expected)


def test_default_priority_must_be_allowed_for_the_tenant():
    found = problems("tenants:\n  default: {}\n  acme: {priorities: [low]}\n")
    assert found == ["tenants.acme.default_priority: 'normal' (the file's default_priority) is not in "
                     "tenants.acme.priorities — set tenants.acme.default_priority to one of low, or allow it"]


def test_wrong_types_say_what_to_write():
    found = problems("""
unknown_tenants: maybe
policy: {backfill: perhaps}
tenants:
  default: {weight: heavy, quota: 8, priorities: low}
""")
    assert any(p.startswith("unknown_tenants: 'maybe' is not allowed — use one of") for p in found)
    assert any(p.startswith("policy.backfill: 'perhaps' is not true/false") for p in found)
    assert any(p.startswith("tenants.default.weight: 'heavy' is not a number") for p in found)
    assert any(p.startswith("tenants.default.quota: expected a mapping") for p in found)
    assert any(p.startswith("tenants.default.priorities: expected a list") for p in found)


def test_empty_classes_and_unknown_top_level_field():
    found = problems("priority_classes: {}\ntenant: {}\n")
    assert any(p.startswith("priority_classes: is empty") for p in found)
    assert any(p.startswith("tenant: unknown field — did you mean `tenants`?") for p in found)


def test_yaml_syntax_and_shape_errors(tmp_path):
    with pytest.raises(TenantsError) as err:
        load_tenants("tenants: {default: [}\n")
    assert err.value.problems[0].startswith("tenants file: YAML syntax error at line 1")
    with pytest.raises(TenantsError) as err:
        load_tenants("- a\n- b\n")
    assert "must be a YAML mapping" in err.value.problems[0]
    with pytest.raises(TenantsError) as err:
        load_tenants(tmp_path / "missing.yaml")
    assert "cannot read the tenants file" in err.value.problems[0] and "— check the path" in err.value.problems[0]


def test_files_are_read_by_path(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(GOOD)
    assert load_tenants(path).weight("acme") == 2
    assert load_tenants(str(path)).weight("acme") == 2
    path.write_text("tenants: {acme: {weight: -1}}\n")
    with pytest.raises(TenantsError) as err:
        load_tenants(path)
    assert len(err.value.problems) == 2  # the weight, and the missing default entry


def test_validate_tenants_takes_a_parsed_mapping():
    assert validate_tenants({"tenants": {"default": {"weight": 3}}}).weight("x") == 3
