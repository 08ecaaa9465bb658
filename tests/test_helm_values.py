"""values.schema.json and the chart's cross-field rules: bad values refused with a message that
names the field, every example values file accepted, every value documented and declared."""

from __future__ import annotations

import json
import re

import pytest
from helm_chart import (
    CASES,
    CHART,
    GOOD_GROUP,
    NAMESPACE,
    RELEASE,
    case_values,
    chart,
    helm,
)

BAD_VALUES = [
    ("negative replicas", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": -1}]}},
     "/ray/workerGroups/0/replicas': minimum: got -1, want 0"),
    ("unknown top-level key", {"replicas": 3}, "additional properties 'replicas' not allowed"),
    ("unknown group key", {"ray": {"workerGroups": [{**GOOD_GROUP, "gpu": 1}]}},
     "additional properties 'gpu' not allowed"),
    ("gpu group without gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "gpu"}]}},
     "missing property 'gpus'"),
    ("gpu group with 0 gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "gpu", "gpus": 0}]}},
     "/ray/workerGroups/0/gpus': minimum: got 0, want 1"),
    ("cpu group with gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "cpu", "gpus": 2}]}},
     "/ray/workerGroups/0/gpus': maximum: got 2, want 0"),
    ("memory without a unit format", {"ray": {"workerGroups": [{**GOOD_GROUP, "memory": "8 GB"}]}},
     "/ray/workerGroups/0/memory"),
    ("group name not a DNS label", {"ray": {"workerGroups": [{**GOOD_GROUP, "name": "GPU_A100"}]}},
     "/ray/workerGroups/0/name"),
    ("group without memory", {"ray": {"workerGroups": [{k: v for k, v in GOOD_GROUP.items() if k != "memory"}]}},
     "missing property 'memory'"),
    ("store not a URI", {"store": {"uri": "my-bucket/store"}}, "/store/uri"),
    ("auth not a bool", {"ray": {"auth": {"enabled": "yes"}}}, "/ray/auth/enabled': got string, want boolean"),
    ("short token", {"ray": {"auth": {"token": "secret"}}}, "/ray/auth/token"),
    ("bad upscaling mode", {"ray": {"autoscaling": {"upscalingMode": "Fast"}}}, "/ray/autoscaling/upscalingMode"),
    ("privileged metrics port", {"scheduler": {"metricsPort": 80}}, "/scheduler/metricsPort"),
]


@pytest.mark.parametrize("values,message", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_clear_message(values, message):
    c = chart()
    with pytest.raises(helm.HelmError) as e:
        c.render(c.merge_values(values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value)


TEMPLATE_RULES = [
    ("duplicate group names", {"ray": {"workerGroups": [GOOD_GROUP, GOOD_GROUP]}}, '"g" is used twice'),
    ("replicas above max", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": 5}]}},
     "replicas 5 is outside minReplicas..maxReplicas = 0..2"),
    ("replicas below min", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": 1, "minReplicas": 2, "maxReplicas": 3}]}},
     "replicas 1 is outside minReplicas..maxReplicas = 2..3"),
    ("s3 keys and existing secret", {"s3": {"existingSecret": "x", "accessKeyId": "a", "secretAccessKey": "b"}},
     "set either existingSecret or accessKeyId/secretAccessKey"),
    ("s3 key without secret", {"s3": {"accessKeyId": "a"}}, "s3.secretAccessKey: empty while s3.accessKeyId is set"),
    ("token with auth off", {"ray": {"auth": {"enabled": False, "token": "x" * 32}}},
     "ray.auth.enabled is false"),
]


@pytest.mark.parametrize("values,message", [r[1:] for r in TEMPLATE_RULES], ids=[r[0] for r in TEMPLATE_RULES])
def test_cross_field_rules_fail_with_the_fix(values, message):
    c = chart()
    c.validate_schema(c.merge_values(values))  # valid field by field ...
    with pytest.raises(helm.HelmError) as e:  # ... but refused by the chart, saying what to do
        c.render(c.merge_values(values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value)


@pytest.mark.parametrize("case", CASES)
def test_example_values_pass_the_schema(case):
    c = chart()
    c.validate_schema(c.merge_values(case_values(case)))


def test_every_value_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*(- )?[A-Za-z_][\w.-]*:", line):
            above = lines[i - 1].strip() if i else ""
            if not above.startswith("#"):
                undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert not undocumented, "values without a comment above them:\n" + "\n".join(undocumented)


def test_values_schema_covers_every_default_value():
    # the schema refuses unknown keys, so each key in values.yaml must be declared in it
    c = chart()
    c.validate_schema(c.values)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(c.values) <= set(schema["properties"])
