"""Ray token auth (on by default, in every container, off only when asked) and the store's wiring:
S3 keys from a chart-made or existing Secret, pod identity, a shared file volume."""

from __future__ import annotations

import base64

import yaml
from helm_chart import (
    all_ray_containers,
    case_values,
    cluster,
    env_of,
    head_spec,
    objects,
    one,
    render_values,
)


def test_token_auth_on_by_default_everywhere():
    rc = cluster("default")
    secret = one("default", "Secret", "-ray-token")
    name = secret["metadata"]["name"]
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": name}
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert len(token) == 48 and token.isalnum()
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for c in all_ray_containers("default"):
        env = env_of(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "auth_token"}, c["name"]
    test_pod = one("default", "Pod", "-test-job-api")
    assert env_of(test_pod["spec"]["containers"][0])["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == name


def test_autoscaler_gets_the_token_too():
    opts = cluster("gpu-values")["spec"]["autoscalerOptions"]
    env = {e["name"]: e for e in opts["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"


def test_existing_token_secret_is_used_not_created():
    rc = cluster("existing-secrets-values")
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": "lorafarm-ray-token"}
    assert not [s for s in objects("existing-secrets-values", "Secret")]
    for c in all_ray_containers("existing-secrets-values"):
        assert env_of(c)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lorafarm-ray-token"


def test_auth_off_for_local_use():
    rc = cluster("local-values")
    assert "authOptions" not in rc["spec"]
    assert not [s for s in objects("local-values", "Secret") if s["metadata"]["name"].endswith("-ray-token")]
    for c in all_ray_containers("local-values"):
        assert env_of(c)["RAY_AUTH_MODE"]["value"] == "disabled"
        assert "RAY_AUTH_TOKEN" not in env_of(c)
    notes = render_values(case_values("local-values"))["lorafarm/templates/NOTES.txt"]
    assert "WARNING: Ray token auth is OFF" in notes


def test_explicit_token_is_the_secret_value():
    out = render_values({"ray": {"auth": {"token": "t" * 40}}})
    secret = yaml.safe_load(out["lorafarm/templates/secret-ray-token.yaml"])
    assert secret["data"]["auth_token"] == base64.b64encode(b"t" * 40).decode()


def test_chart_created_s3_secret_wired_into_every_container():
    secret = one("local-values", "Secret", "-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for c in all_ray_containers("local-values"):
        env = env_of(c)
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"], "key": "AWS_ACCESS_KEY_ID"}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
        assert env["LORAFARM_STORE"]["value"] == "s3://lorafarm/store"


def test_existing_s3_secret_with_custom_keys_and_endpoint():
    for c in all_ray_containers("existing-secrets-values"):
        env = env_of(c)
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "minio-lorafarm", "key": "access-key"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-key"
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "minio-lorafarm", "key": "session-token", "optional": True}
        assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
        assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"


def test_pod_identity_means_no_keys():
    sa = one("gpu-values", "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for c in all_ray_containers("gpu-values"):
        env = env_of(c)
        assert "AWS_ACCESS_KEY_ID" not in env and env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    assert head_spec("gpu-values")["serviceAccountName"] == sa["metadata"]["name"]


def test_file_store_volume_reaches_every_ray_container():
    for c in all_ray_containers("file-store-values"):
        assert {"name": "lorafarm-shared", "mountPath": "/mnt/lorafarm"} in c["volumeMounts"]
        assert env_of(c)["LORAFARM_STORE"]["value"] == "file:///mnt/lorafarm/store"
