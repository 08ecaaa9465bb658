"""Rendered objects against real schemas: core objects strictly against the Kubernetes ones
(kubernetes-validate), RayClusters against KubeRay's CRD schema (tests/schemas/) with unknown
fields refused, and that check shown to bite."""

from __future__ import annotations

import pytest
from helm_chart import (
    CASES,
    cluster,
    rendered,
    strip,
)
from k8s_schemas import (
    KUBE_VERSIONS,
    jsonschema,
    kubernetes_validate,
    validate_kuberay,
    validate_pod_template,
)

CRD_KINDS = {"RayCluster", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


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
    validate_kuberay(strip(rc), "raycluster")
    validate_pod_template(rc["spec"]["headGroupSpec"]["template"], f"{case}: head pod")
    for g in rc["spec"]["workerGroupSpecs"]:
        validate_pod_template(g["template"], f"{case}: worker group {g['groupName']}")


def test_crd_check_refuses_unknown_fields():
    # the strict CRD check must itself bite, or the test above proves nothing
    rc = strip(cluster("default"))
    rc["spec"]["headGroupSpec"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError, match="bogus"):
        validate_kuberay(strip(rc), "raycluster")
    rc = strip(cluster("default"))
    rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_kuberay(strip(rc), "raycluster")
