"""Helm lint of every values file, and names the API server would accept (lengths, DNS labels,
IANA port names) that no OpenAPI schema carries; the NOTES a user reads after install."""

from __future__ import annotations

import re

import pytest
import yaml
from helm_chart import (
    CASES,
    CHART,
    NAMESPACE,
    all_ray_containers,
    case_values,
    chart,
    helm,
    render_values,
    rendered,
)


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_clean(case):
    report = helm.lint(str(CHART), case_values(case), strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_lint_reports_a_bad_value():
    report = helm.lint(str(CHART), {"ray": {"workerGroups": [{"name": "x", "replicas": -1, "cpu": "1",
                                                               "memory": "1Gi"}]}}, strict=True)
    assert any(m["severity"] == 3 and "replicas" in m["error"] for m in report["messages"])


def test_every_values_file_is_covered():
    # the issue asks for GPU groups, existing secrets, monitoring, auth off — at least those
    assert {"gpu-values", "existing-secrets-values", "monitoring-values", "local-values"} <= set(CASES)


def test_object_names_stay_short_for_long_release_names():
    c = chart()
    out = c.render(c.merge_values({}), name="a-very-long-release-name-for-a-team-cluster", namespace=NAMESPACE)
    rc = next(d for d in yaml.safe_load_all(out["lorafarm/templates/raycluster.yaml"]) if d)
    assert len(rc["metadata"]["name"]) <= 40  # KubeRay adds suffixes for pods and Services
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rc["metadata"]["name"])


@pytest.mark.parametrize("case", CASES)
def test_names_the_api_server_would_accept(case):
    # rules the OpenAPI schemas do not carry but the API server enforces
    iana = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")
    dns = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
    for doc in rendered(case):
        assert dns.fullmatch(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 253
        for value in doc["metadata"].get("labels", {}).values():
            assert len(str(value)) <= 63
        for svc_port in doc.get("spec", {}).get("ports", []) if doc["kind"] == "Service" else []:
            assert iana.fullmatch(svc_port["name"]), svc_port
    for c in all_ray_containers(case):
        for p in c.get("ports", []):
            assert iana.fullmatch(p["name"]), f"{c['name']}: port name {p['name']!r} (<= 15 chars, IANA_SVC_NAME)"
        assert len(c["name"]) <= 63


def test_notes_tell_how_to_submit_and_pull():
    notes = render_values({})["lorafarm/templates/NOTES.txt"]
    assert "ray job submit" in notes and "lorafarm pull" in notes
    assert "svc/lf-lorafarm-dashboard" in notes
    assert "get secret lf-lorafarm-ray-token" in notes and "RAY_AUTH_MODE=token" in notes
    assert "WARNING" not in notes
