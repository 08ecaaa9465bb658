"""Offline schema checks of Kubernetes objects: core objects strictly against the Kubernetes
schemas (kubernetes-validate), KubeRay objects against KubeRay's CRD schemas vendored in
tests/schemas/, with unknown fields refused."""

from __future__ import annotations

import functools
import json

import pytest
from helpers import ROOT, require_module

kubernetes_validate = require_module("kubernetes_validate")
jsonschema = require_module("jsonschema")

SCHEMAS = ROOT / "tests" / "schemas"  # see its README
KUBE_VERSIONS = ("1.27", "1.37")  # the chart's kubeVersion floor, and the newest schemas here


@functools.cache
def _kuberay_schema(kind: str) -> dict:
    """KubeRay's v1 schema of ``kind`` ("raycluster", "rayjob"), with unknown fields refused
    wherever an object lists its properties (what the API server's structural pruning would
    silently drop)."""
    schema = json.loads((SCHEMAS / f"kuberay-{kind}-v1.json").read_text())

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


def validate_kuberay(doc: dict, kind: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is a valid KubeRay ``kind``."""
    jsonschema.validate(doc, _kuberay_schema(kind), cls=jsonschema.Draft7Validator)


def validate_pod_template(template: dict, where: str) -> None:
    """A KubeRay pod template is a core PodTemplateSpec: check it strictly as a Pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {}), "spec": template["spec"]}
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} (Kubernetes {version}): {e.message} at {list(e.absolute_path)}")
