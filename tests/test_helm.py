"""The Helm chart (helm/lorafarm), rendered and linted offline with Helm's own engine.

helm-python-sdk embeds Helm's Go library, so no `helm` binary or cluster is needed. Each values
file in helm/lorafarm/ci/ is rendered and its objects checked: core objects strictly against the
Kubernetes schemas (kubernetes-validate), RayClusters against KubeRay's CRD schema with unknown
fields refused, and the wiring between them (auth, S3, tenants, services, scheduler sidecar).
What only a real cluster can check is listed in helm/lorafarm/README.md.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "lorafarm"
SCHEMAS = ROOT.parent / "shared" / "schemas"
if not SCHEMAS.is_dir():  # a checkout without the shared folder next to it
    SCHEMAS = Path(os.environ.get("LORAFARM_CRD_SCHEMAS", "/work/shared/schemas"))
RELEASE, NAMESPACE = "lf", "ml"
KUBE_VERSIONS = ("1.27", "1.37")  # the chart's kubeVersion floor, and the newest schemas here
CASES = ["default", *sorted(p.stem for p in (CHART / "ci").glob("*.yaml"))]
CRD_KINDS = {"RayCluster", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


# ---------------------------------------------------------------- rendering helpers
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


@functools.cache
def crd_schema(filename: str) -> dict:
    """The v1 openAPIV3Schema of a KubeRay CRD, with unknown fields refused wherever an object
    lists its properties (what the API server's structural pruning would silently drop)."""
    crd = yaml.load((SCHEMAS / filename).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]

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


def validate_crd(doc: dict, filename: str) -> None:
    jsonschema.validate(strip(doc), crd_schema(filename), cls=jsonschema.Draft7Validator)


def validate_pod_template(template: dict, where: str) -> None:
    """A RayCluster's pod templates are core PodTemplateSpecs: check them strictly as Pods."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {}), "spec": template["spec"]}
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} (Kubernetes {version}): {e.message} at {list(e.absolute_path)}")


# ---------------------------------------------------------------- render, lint, schemas
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
    validate_crd(rc, "ray.io_rayclusters.yaml")
    validate_pod_template(rc["spec"]["headGroupSpec"]["template"], f"{case}: head pod")
    for g in rc["spec"]["workerGroupSpecs"]:
        validate_pod_template(g["template"], f"{case}: worker group {g['groupName']}")


def test_crd_check_refuses_unknown_fields():
    # the strict CRD check must itself bite, or the test above proves nothing
    rc = strip(cluster("default"))
    rc["spec"]["headGroupSpec"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError, match="bogus"):
        validate_crd(rc, "ray.io_rayclusters.yaml")
    rc = strip(cluster("default"))
    rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_crd(rc, "ray.io_rayclusters.yaml")


def test_object_names_stay_short_for_long_release_names():
    c = chart()
    out = c.render(c.merge_values({}), name="a-very-long-release-name-for-a-team-cluster", namespace=NAMESPACE)
    rc = next(d for d in yaml.safe_load_all(out["lorafarm/templates/raycluster.yaml"]) if d)
    assert len(rc["metadata"]["name"]) <= 40  # KubeRay adds suffixes for pods and Services
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rc["metadata"]["name"])


# ---------------------------------------------------------------- values.schema.json
GOOD_GROUP = {"name": "g", "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "cpu": "4", "memory": "8Gi"}
BAD_VALUES = [
    ("negative replicas", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": -1}]}},
     "/ray/workerGroups/0/replicas': minimum: got -1, want 0"),
    ("unknown top-level key", {"replicas": 3}, "additional properties 'replicas' not allowed"),
    ("unknown group key", {"ray": {"workerGroups": [{**GOOD_GROUP, "gpu": 1}]}},
     "additional properties 'gpu' not allowed"),
    ("gpu group without gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "gpu"}]}},
     "missing property 'gpus'"),
    ("gpu group with 0 gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "gpu", "gpus": 0}]}},
     "/ray/workerGroups/0/gpus': minimum: got 0, want 1"),
    ("cpu group with gpus", {"ray": {"workerGroups": [{**GOOD_GROUP, "type": "cpu", "gpus": 2}]}},
     "/ray/workerGroups/0/gpus': maximum: got 2, want 0"),
    ("memory without a unit format", {"ray": {"workerGroups": [{**GOOD_GROUP, "memory": "8 GB"}]}},
     "/ray/workerGroups/0/memory"),
    ("group name not a DNS label", {"ray": {"workerGroups": [{**GOOD_GROUP, "name": "GPU_A100"}]}},
     "/ray/workerGroups/0/name"),
    ("group without memory", {"ray": {"workerGroups": [{k: v for k, v in GOOD_GROUP.items() if k != "memory"}]}},
     "missing property 'memory'"),
    ("store not a URI", {"store": {"uri": "my-bucket/store"}}, "/store/uri"),
    ("auth not a bool", {"ray": {"auth": {"enabled": "yes"}}}, "/ray/auth/enabled': got string, want boolean"),
    ("short token", {"ray": {"auth": {"token": "secret"}}}, "/ray/auth/token"),
    ("bad upscaling mode", {"ray": {"autoscaling": {"upscalingMode": "Fast"}}}, "/ray/autoscaling/upscalingMode"),
    ("privileged metrics port", {"scheduler": {"metricsPort": 80}}, "/scheduler/metricsPort"),
]


@pytest.mark.parametrize("values,message", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_clear_message(values, message):
    c = chart()
    with pytest.raises(helm.HelmError) as e:
        c.render(c.merge_values(values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value)


TEMPLATE_RULES = [
    ("duplicate group names", {"ray": {"workerGroups": [GOOD_GROUP, GOOD_GROUP]}}, '"g" is used twice'),
    ("replicas above max", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": 5}]}},
     "replicas 5 is outside minReplicas..maxReplicas = 0..2"),
    ("replicas below min", {"ray": {"workerGroups": [{**GOOD_GROUP, "replicas": 1, "minReplicas": 2, "maxReplicas": 3}]}},
     "replicas 1 is outside minReplicas..maxReplicas = 2..3"),
    ("s3 keys and existing secret", {"s3": {"existingSecret": "x", "accessKeyId": "a", "secretAccessKey": "b"}},
     "set either existingSecret or accessKeyId/secretAccessKey"),
    ("s3 key without secret", {"s3": {"accessKeyId": "a"}}, "s3.secretAccessKey: empty while s3.accessKeyId is set"),
    ("token with auth off", {"ray": {"auth": {"enabled": False, "token": "x" * 32}}},
     "ray.auth.enabled is false"),
]


@pytest.mark.parametrize("values,message", [r[1:] for r in TEMPLATE_RULES], ids=[r[0] for r in TEMPLATE_RULES])
def test_cross_field_rules_fail_with_the_fix(values, message):
    c = chart()
    c.validate_schema(c.merge_values(values))  # valid field by field ...
    with pytest.raises(helm.HelmError) as e:  # ... but refused by the chart, saying what to do
        c.render(c.merge_values(values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(e.value)


@pytest.mark.parametrize("case", CASES)
def test_example_values_pass_the_schema(case):
    c = chart()
    c.validate_schema(c.merge_values(case_values(case)))


def test_every_value_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*(- )?[A-Za-z_][\w.-]*:", line):
            above = lines[i - 1].strip() if i else ""
            if not above.startswith("#"):
                undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert not undocumented, "values without a comment above them:\n" + "\n".join(undocumented)


def test_values_schema_covers_every_default_value():
    # the schema refuses unknown keys, so each key in values.yaml must be declared in it
    c = chart()
    c.validate_schema(c.values)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(c.values) <= set(schema["properties"])


# ---------------------------------------------------------------- auth
def test_token_auth_on_by_default_everywhere():
    rc = cluster("default")
    secret = one("default", "Secret", "-ray-token")
    name = secret["metadata"]["name"]
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": name}
    token = __import__("base64").b64decode(secret["data"]["auth_token"]).decode()
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
    assert secret["data"]["auth_token"] == __import__("base64").b64encode(b"t" * 40).decode()


# ---------------------------------------------------------------- S3 and store
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


# ---------------------------------------------------------------- worker groups
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


# ---------------------------------------------------------------- scheduler, tenants
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


# ---------------------------------------------------------------- services and monitoring
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


def test_notes_tell_how_to_submit_and_pull():
    notes = render_values({})["lorafarm/templates/NOTES.txt"]
    assert "ray job submit" in notes and "lorafarm pull" in notes
    assert "svc/lf-lorafarm-dashboard" in notes
    assert "get secret lf-lorafarm-ray-token" in notes and "RAY_AUTH_MODE=token" in notes
    assert "WARNING" not in notes


# ---------------------------------------------------------------- the serve loop, run for real
FAKE_RAY = """#!/bin/sh
echo "ray $*" >> "$CALLS"
exit 0
"""
FAKE_LORAFARM = """#!/bin/sh
echo "lorafarm $*" >> "$CALLS"
echo alive > "$STATE_FILE"
exit 0
"""
FAKE_PYTHON = """#!/bin/sh
body=$(cat)
case "$body" in
  *list_actors*) state=$(cat "$STATE_FILE"); echo "python state-check ($state)" >> "$CALLS"
                 case "$state" in alive) exit 0;; error) exit 2;; *) exit 1;; esac;;
  *ray.kill*) echo "python kill" >> "$CALLS"; echo dead > "$STATE_FILE"; exit 0;;
esac
exit 3
"""


def run_loop(tmp_path, initial_state: str, until, extra_env=None, on_started=None):
    """Run files/serve-loop.sh with fake `ray`, `python` and `lorafarm` on PATH until `until(calls)`,
    then SIGTERM it; returns the calls made, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in {"ray": FAKE_RAY, "lorafarm": FAKE_LORAFARM, "python": FAKE_PYTHON}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls, state = tmp_path / "calls", tmp_path / "state"
    calls.touch()
    state.write_text(initial_state)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("unknown_tenants: default\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "STATE_FILE": str(state),
           "LORAFARM_STORE": "s3://b/store", "LORAFARM_TENANTS": str(tenants), "LORAFARM_METRICS_PORT": "9100",
           "LORAFARM_HANG_TIMEOUT": "600", "LORAFARM_RESERVE_CPUS": "2", "CHECK_INTERVAL_SECONDS": "0.05",
           "RAY_ADDRESS": "10.0.0.5:6379", **(extra_env or {})}
    proc = subprocess.Popen(["bash", str(CHART / "files" / "serve-loop.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        started = False
        while not until(calls.read_text().splitlines()):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"timed out; calls: {calls.read_text()}"
            if on_started and not started and calls.read_text().count("state-check") >= 2:
                on_started(tenants)
                started = True
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0  # a SIGTERM ends the loop promptly and cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
    return calls.read_text().splitlines()


def test_serve_loop_starts_the_scheduler_when_missing(tmp_path):
    calls = run_loop(tmp_path, "dead", lambda c: sum("state-check (alive)" in x for x in c) >= 3)
    assert calls[0] == "ray health-check --address 10.0.0.5:6379"  # waits for the cluster first
    serves = [c for c in calls if c.startswith("lorafarm")]
    assert serves == [f"lorafarm serve --store s3://b/store --hang-timeout 600 --reserve-cpus 2 --metrics-port 9100 "
                      f"--tenants {tmp_path / 'tenants.yaml'}"]  # once: later checks find it alive


def test_serve_loop_leaves_a_live_scheduler_alone(tmp_path):
    calls = run_loop(tmp_path, "alive", lambda c: sum("state-check" in x for x in c) >= 4)
    assert not [c for c in calls if c.startswith("lorafarm") or "kill" in c]


def test_serve_loop_runs_serve_when_the_check_fails(tmp_path):
    # `lorafarm serve` is idempotent, so an unanswered check falls back to it
    calls = run_loop(tmp_path, "error", lambda c: any(x.startswith("lorafarm serve") for x in c))
    assert "python state-check (error)" in calls


def test_serve_loop_restarts_on_tenants_change_only_when_asked(tmp_path):
    change = lambda tenants: tenants.write_text("unknown_tenants: reject\n")  # noqa: E731
    calls = run_loop(tmp_path / "on", "alive", lambda c: any(x.startswith("lorafarm serve") for x in c),
                     extra_env={"RESTART_ON_CONFIG_CHANGE": "true"}, on_started=change)
    assert calls.index("python kill") < next(i for i, c in enumerate(calls) if c.startswith("lorafarm serve"))
    (tmp_path / "off").mkdir()
    calls = run_loop(tmp_path / "off", "alive", lambda c: sum("state-check" in x for x in c) >= 6,
                     on_started=change)
    assert not [c for c in calls if "kill" in c or c.startswith("lorafarm")]


def test_serve_loop_script_parses():
    subprocess.run(["bash", "-n", str(CHART / "files" / "serve-loop.sh")], check=True)
    # its embedded Python must compile too
    text = (CHART / "files" / "serve-loop.sh").read_text()
    for body in re.findall(r"<<'PY'\n(.*?)\nPY\n", text, re.S):
        compile(body, "serve-loop.sh", "exec")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
