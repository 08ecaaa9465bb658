"""The scheduler sidecar on the head (serve loop, sockets, ports) and the tenants file it reads,
which `lorafarm serve` itself accepts or refuses."""

from __future__ import annotations

import pytest
import yaml
from helm_chart import (
    CASES,
    CHART,
    case_values,
    chart,
    container,
    env_of,
    head_spec,
    objects,
    one,
    render_values,
)


def test_scheduler_sidecar_runs_the_serve_loop():
    spec = head_spec("default")
    assert spec["containers"][0]["name"] == "ray-head"  # KubeRay runs Ray in the first container
    side = container(spec, "lorafarm-scheduler")
    assert side["command"] == ["/bin/bash", "/opt/lorafarm/serve-loop.sh"]
    env = env_of(side)
    assert env["RAY_ADDRESS"]["value"] == "$(POD_IP):6379"
    assert list(env).index("POD_IP") < list(env).index("RAY_ADDRESS")  # $(VAR) needs it defined before
    assert env["LORAFARM_METRICS_PORT"]["value"] == "9100"
    assert env["LORAFARM_TENANTS"]["value"] == "/etc/lorafarm/tenants/tenants.yaml"
    mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # the sidecar's driver needs the raylet's sockets: /tmp/ray shared with the Ray container
    assert mounts["/tmp/ray"] == "ray-logs" and "emptyDir" in volumes["ray-logs"]
    assert {"name": "ray-logs", "mountPath": "/tmp/ray"} in spec["containers"][0]["volumeMounts"]
    tenants_cm = one("default", "ConfigMap", "-tenants")
    assert volumes[mounts["/etc/lorafarm/tenants"]]["configMap"]["name"] == tenants_cm["metadata"]["name"]
    script_cm = one("default", "ConfigMap", "-scheduler")
    assert volumes[mounts["/opt/lorafarm"]]["configMap"]["name"] == script_cm["metadata"]["name"]
    assert script_cm["data"]["serve-loop.sh"] == (CHART / "files" / "serve-loop.sh").read_text()
    metrics_port = container(spec, "ray-head")["ports"]
    assert {"name": "lf-metrics", "containerPort": 9100} in metrics_port


def test_existing_tenants_configmap_is_mounted():
    assert not [c for c in objects("existing-secrets-values", "ConfigMap") if c["metadata"]["name"].endswith("-tenants")]
    volumes = {v["name"]: v for v in head_spec("existing-secrets-values")["volumes"]}
    assert volumes["lorafarm-tenants"]["configMap"]["name"] == "lorafarm-tenants"


def test_scheduler_off_gives_a_bare_cluster():
    out = render_values({"scheduler": {"enabled": False}, "monitoring": {"serviceMonitor": {"enabled": True}}})
    rc = yaml.safe_load(out["lorafarm/templates/raycluster.yaml"])
    names = [c["name"] for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]]
    assert names == ["ray-head"]
    assert not out["lorafarm/templates/service-metrics.yaml"].strip()
    assert not out["lorafarm/templates/servicemonitor.yaml"].strip()


@pytest.mark.parametrize("case", [c for c in CASES if c != "existing-secrets-values"])
def test_tenants_configmap_is_a_valid_tenants_file(case, tmp_path):
    from lorafarm.tenants import load_tenants

    cm = one(case, "ConfigMap", "-tenants")
    path = tmp_path / "tenants.yaml"
    path.write_text(cm["data"]["tenants.yaml"])
    config = load_tenants(path.read_text())  # raises TenantsError listing every problem
    expected = chart().merge_values(case_values(case))["tenants"]["config"]
    assert yaml.safe_load(path.read_text()) == expected
    assert set(expected["tenants"]) <= set(config.tenants)


def test_bad_tenants_config_is_caught_by_lorafarm(tmp_path):
    # the chart passes the tenants file through as-is; `lorafarm serve` is what refuses it
    from lorafarm.tenants import TenantsError, load_tenants

    out = render_values({"tenants": {"config": {"tenants": {"acme": {"weight": 0}}, "unknown_tenants": "reject"}}})
    text = yaml.safe_load(out["lorafarm/templates/configmap-tenants.yaml"])["data"]["tenants.yaml"]
    with pytest.raises(TenantsError, match="weight"):
        load_tenants(text)
