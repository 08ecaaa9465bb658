"""Worker groups (GPU, CPU, per-group images), images following the app and Ray versions, pods
that run as non-root."""

from __future__ import annotations

import re

import yaml
from helm_chart import (
    CASES,
    GOOD_GROUP,
    chart,
    cluster,
    head_spec,
    render_values,
)
from helpers import ROOT


def test_gpu_worker_groups():
    rc = cluster("gpu-values")
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert list(groups) == ["a100", "l4", "cpu"]
    a100 = groups["a100"]
    assert (a100["replicas"], a100["minReplicas"], a100["maxReplicas"]) == (2, 2, 4)
    pod = a100["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 8 and res["requests"]["nvidia.com/gpu"] == 8
    assert res["limits"]["memory"] == "1000Gi"
    assert pod["containers"][0]["image"].endswith(":0.1.0-gpu")
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    l4 = groups["l4"]["template"]["spec"]["containers"][0]
    assert l4["image"].endswith(":0.1.0-gpu-cu128")  # per-group image override
    assert groups["l4"]["rayStartParams"] == {"num-cpus": "12"}
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert cpu["image"].endswith("/lorafarm:0.1.0")
    assert head_spec("gpu-values")["containers"][0]["image"].endswith("/lorafarm:0.1.0")


def test_default_images_follow_app_version():
    rc = cluster("default")
    version = chart().metadata["appVersion"]
    assert rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"].endswith(f":{version}")
    out = render_values({"ray": {"workerGroups": [{**GOOD_GROUP, "gpus": 1}]}})
    gpu_rc = yaml.safe_load(out["lorafarm/templates/raycluster.yaml"])
    assert gpu_rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"].endswith(
        f":{version}-gpu")


def test_ray_version_matches_the_image():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert cluster("default")["spec"]["rayVersion"] == ray_version
    assert chart().metadata["annotations"]["lorafarm.io/ray-version"] == ray_version


def test_pods_run_as_non_root():
    for case in CASES:
        spec = cluster(case)["spec"]
        for pod in [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in
                                                                     spec["workerGroupSpecs"]]:
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, (case, c["name"])
