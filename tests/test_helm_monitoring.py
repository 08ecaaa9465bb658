"""Services reaching the head's ports, and monitoring: ServiceMonitor/PodMonitor, the alert rules
and the Grafana dashboard the chart carries as copies of deploy/."""

from __future__ import annotations

import json

import pytest
import yaml
from helm_chart import (
    CHART,
    cluster,
    objects,
    one,
    rendered,
)
from helpers import ROOT


def test_services_reach_the_head_ports():
    rc = cluster("default")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    ports = {p["name"] for c in head["containers"] for p in c.get("ports", [])}
    for svc in objects("default", "Service"):
        # KubeRay labels its pods ray.io/cluster=<RayCluster name>, ray.io/node-type=head
        assert svc["spec"]["selector"] == {"ray.io/cluster": rc["metadata"]["name"], "ray.io/node-type": "head"}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p["targetPort"])
    assert one("default", "Service", "-dashboard")["spec"]["ports"][0]["port"] == 8265


def test_monitoring_off_by_default():
    kinds = {d["kind"] for d in rendered("default")}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [c for c in objects("default", "ConfigMap") if "grafana" in c["metadata"]["name"]]


def test_service_monitor_scrapes_the_metrics_service_as_job_lorafarm():
    sm = one("monitoring-values", "ServiceMonitor")
    svc = one("monitoring-values", "Service", "-metrics")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"] and endpoint["interval"] == "15s"
    # the alert rules select job="lorafarm"
    assert {"targetLabel": "job", "replacement": "lorafarm"} in endpoint["relabelings"]
    assert 'job="lorafarm"' in (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
    pm = one("monitoring-values", "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster("monitoring-values")["metadata"]["name"]}


def test_prometheus_rule_is_the_alerts_file():
    rule = one("monitoring-values", "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts
    assert rule["spec"]["groups"][0]["rules"][1]["annotations"]["summary"].startswith("tenant {{ $labels.tenant }}")


def test_grafana_dashboard_configmap_is_the_dashboard():
    cm = one("monitoring-values", "ConfigMap", "-grafana-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    original = json.loads((ROOT / "deploy" / "grafana" / "lorafarm.json").read_text())
    assert json.loads(cm["data"]["lorafarm.json"]) == original


@pytest.mark.parametrize("copy_path,original", [
    ("files/alerts.yaml", "deploy/prometheus/alerts.yaml"),
    ("files/lorafarm.json", "deploy/grafana/lorafarm.json"),
])
def test_chart_copies_are_identical_to_the_originals(copy_path, original):
    # Helm cannot read files outside the chart, so the chart carries copies:
    #   cp deploy/prometheus/alerts.yaml deploy/grafana/lorafarm.json helm/lorafarm/files/
    assert (CHART / copy_path).read_bytes() == (ROOT / original).read_bytes(), f"re-copy {original} to {copy_path}"
