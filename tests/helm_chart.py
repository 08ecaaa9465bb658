"""Render helm/lorafarm offline with Helm's own engine, and find objects in what it renders.

helm-python-sdk embeds Helm's Go library, so no `helm` binary or cluster is needed. Each values
file in helm/lorafarm/ci/ is one case; "default" is the chart's own values. What only a real
cluster can check is listed in helm/lorafarm/README.md.
"""

from __future__ import annotations

import copy
import functools

import yaml
from helpers import ROOT, require_module

helm = require_module("helm_python")

CHART = ROOT / "helm" / "lorafarm"
RELEASE, NAMESPACE = "lf", "ml"
CASES = ["default", *sorted(p.stem for p in (CHART / "ci").glob("*.yaml"))]
GOOD_GROUP = {"name": "g", "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "cpu": "4", "memory": "8Gi"}


@functools.cache
def chart():
    return helm.Chart.load(str(CHART))


def case_values(case: str) -> dict:
    if case == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{case}.yaml").read_text()) or {}


def render_values(values: dict) -> dict[str, str]:
    c = chart()
    return c.render(c.merge_values(values), name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def rendered(case: str) -> tuple[dict, ...]:
    """Every object the chart renders for a values file (NOTES.txt left out)."""
    docs = []
    for path, text in render_values(case_values(case)).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})["_template"] = path
                docs.append(doc)
    return tuple(docs)


def objects(case: str, kind: str) -> list[dict]:
    return [d for d in rendered(case) if d["kind"] == kind]


def one(case: str, kind: str, name_suffix: str = "") -> dict:
    found = [d for d in objects(case, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{case}: expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def strip(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("_template", None)
    return doc


def cluster(case: str) -> dict:
    return one(case, "RayCluster")


def head_spec(case: str) -> dict:
    return cluster(case)["spec"]["headGroupSpec"]["template"]["spec"]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def all_ray_containers(case: str) -> list[dict]:
    spec = cluster(case)["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    return [c for p in pods for c in p["containers"]]
