"""The chart's tenant REST API: the scheduler started with --api-port, a Service on the head pod,
an optional Ingress with TLS, and the tenants file (API key digests) from a Secret."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from helm_chart import CHART, container, env_of, head_spec, objects, one, render_values

from lorafarm.auth import hash_key


def test_off_by_default():
    assert not [s for s in objects("default", "Service") if s["metadata"]["name"].endswith("-api")]
    assert not objects("default", "Ingress")
    assert "LORAFARM_API_PORT" not in env_of(container(head_spec("default"), "lorafarm-scheduler"))


def test_the_api_is_served_by_the_scheduler_and_exposed_as_a_service_and_a_tls_ingress():
    spec = head_spec("api-values")
    assert env_of(container(spec, "lorafarm-scheduler"))["LORAFARM_API_PORT"]["value"] == "8000"
    assert {"name": "lf-api", "containerPort": 8000} in container(spec, "ray-head")["ports"]
    svc = one("api-values", "Service", "-api")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 443, "targetPort": "lf-api", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == one("api-values", "Service", "-metrics")["spec"]["selector"]  # the head pod
    ing = one("api-values", "Ingress", "-api")
    assert ing["spec"]["tls"] == [{"hosts": ["lorafarm.example.com"], "secretName": "lorafarm-api-tls"}]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "lorafarm.example.com" and ing["spec"]["ingressClassName"] == "nginx"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    # the serve loop passes the port on
    script = (CHART / "files" / "serve-loop.sh").read_text()
    assert 'serve_args+=(--api-port "$LORAFARM_API_PORT")' in script


def test_the_serve_loop_builds_the_api_port_flag(tmp_path):
    script = (CHART / "files" / "serve-loop.sh").read_text()
    args_block = script[script.index("serve_args=("):script.index("tenants_digest()")]
    out = subprocess.run(["bash", "-c", args_block + 'printf "%s\\n" "${serve_args[@]}"'], capture_output=True,
                         text=True, env={"LORAFARM_STORE": "s3://b/s", "LORAFARM_API_PORT": "8000", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "--api-port\n8000" in out.stdout, out.stderr


def test_the_tenants_file_with_key_digests_comes_from_a_secret():
    out = render_values({"tenants": {"existingSecret": "tenants-with-keys"}})
    assert not out["lorafarm/templates/configmap-tenants.yaml"].strip()
    rc = yaml.safe_load(out["lorafarm/templates/raycluster.yaml"])
    volumes = {v["name"]: v for v in rc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert volumes["lorafarm-tenants"] == {"name": "lorafarm-tenants", "secret": {
        "secretName": "tenants-with-keys", "items": [{"key": "tenants.yaml", "path": "tenants.yaml"}]}}


def test_key_digests_in_values_are_a_valid_tenants_file():
    from lorafarm.tenants import load_tenants

    digest = hash_key("lf_some_key")
    out = render_values({"tenants": {"config": {"admin_keys": [digest], "tenants": {
        "default": {"weight": 1}, "acme": {"keys": [hash_key("lf_acme_key")]}}}}})
    text = yaml.safe_load(out["lorafarm/templates/configmap-tenants.yaml"])["data"]["tenants.yaml"]
    config = load_tenants(text)
    assert config.keyring().enabled and config.admin_keys == [digest]


@pytest.mark.parametrize("values, words", [
    ({"ingress": {"api": {"enabled": True, "host": "x.example.com"}}}, "ingress.api.enabled: true but the API is off"),
    ({"scheduler": {"api": {"enabled": True}}, "ingress": {"api": {"enabled": True}}}, "ingress.api.host: empty"),
    ({"scheduler": {"api": {"enabled": True, "port": 9100}}}, "scheduler.api.port: the same as scheduler.metricsPort"),
])
def test_bad_api_values_fail_with_the_fix(values, words):
    with pytest.raises(Exception, match=words):
        render_values(values)
