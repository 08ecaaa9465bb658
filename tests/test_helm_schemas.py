"""Rendered objects against real schemas: core objects strictly against the Kubernetes ones
(kubernetes-validate), RayClusters against KubeRay's CRD schema (tests/schemas/) with unknown
fields refused."""

from __future__ import annotations

import functools
import json

import pytest
from helm_chart import (
    CASES,
    cluster,
    rendered,
    strip,
)
from helpers import ROOT, require_module

kubernetes_validate = require_module("kubernetes_validate")
jsonschema = require_module("jsonschema")

RAYCLUSTER_SCHEMA = ROOT / "tests" / "schemas" / "kuberay-raycluster-v1.json"  # see its README
KUBE_VERSIONS = ("1.27", "1.37")  # the chart's kubeVersion floor, and the newest schemas here
CRD_KINDS = {"RayCluster", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


@functools.cache
def raycluster_schema() -> dict:
    """KubeRay's v1 RayCluster schema, with unknown fields refused wherever an object lists its
    properties (what the API server's structural pruning would silently drop)."""
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())

    def close(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    # metadata is `type: object` without properties in CRDs; check it like the API server does.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def validate_raycluster(doc: dict) -> None:
    jsonschema.validate(strip(doc), raycluster_schema(), cls=jsonschema.Draft7Validator)


def validate_pod_template(template: dict, where: str) -> None:
    """A RayCluster's pod templates are core PodTemplateSpecs: check them strictly as Pods."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {}), "spec": template["spec"]}
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} (Kubernetes {version}): {e.message} at {list(e.absolute_path)}")


@pytest.mark.parametrize("case", CASES)
def test_core_objects_validate_strictly(case):
    checked = 0
    for doc in rendered(case):
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(doc), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{case}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): "
                            f"{e.message} at {list(e.absolute_path)}")
        checked += 1
    assert checked >= 4  # ServiceAccount/Secret/ConfigMaps/Services at least


@pytest.mark.parametrize("case", CASES)
def test_raycluster_validates_against_kuberay_crd(case):
    rc = cluster(case)
    validate_raycluster(rc)
    validate_pod_template(rc["spec"]["headGroupSpec"]["template"], f"{case}: head pod")
    for g in rc["spec"]["workerGroupSpecs"]:
        validate_pod_template(g["template"], f"{case}: worker group {g['groupName']}")


def test_crd_check_refuses_unknown_fields():
    # the strict CRD check must itself bite, or the test above proves nothing
    rc = strip(cluster("default"))
    rc["spec"]["headGroupSpec"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError, match="bogus"):
        validate_raycluster(rc)
    rc = strip(cluster("default"))
    rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_raycluster(rc)
