"""The tenant REST API (`lorafarm serve --api-port`) over real HTTP on a real served cluster:
keys (none, wrong, another tenant's), a full job from POST to a verified adapter download,
400s naming the field like the CLI (the preflight included), a body over the size limit, the CLI's --api mode."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import requests
from helpers import ROOT, free_port, quickstart_spec

from lorafarm.auth import hash_key
from lorafarm.errors import SpecError
from lorafarm.rest.app import MAX_BODY_BYTES
from lorafarm.spec import validate_spec

pytestmark = pytest.mark.integration

ALICE, BOB, ADMIN = "lf_alice_" + "e5" * 20, "lf_bob_" + "f6" * 20, "lf_admin_" + "a7" * 20
TENANTS = f"""
admin_keys: ["{hash_key(ADMIN)}"]
tenants:
  default: {{weight: 1}}
  alice: {{keys: ["{hash_key(ALICE)}"]}}
  bob: {{keys: ["{hash_key(BOB)}"]}}
"""
QUICK = {"training": {"max_steps": 2, "warmup_steps": 1, "eval_every_steps": 0, "seq_len": 64, "global_batch_size": 4,
                      "micro_batch_size": 4},
         "resources": {"workers": 1, "cpus_per_worker": 1}}


@pytest.fixture(scope="module")
def api(serve_cluster):
    port = free_port()
    head = serve_cluster(TENANTS, 4, "--api-port", str(port))
    head.url = f"http://127.0.0.1:{port}"
    return head


def _spec(head, tenant: str, name: str) -> dict:
    return quickstart_spec(tenant, name, head.tmp / "small.jsonl", **QUICK)


def _h(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _all_jobs(api) -> list[dict]:
    r = requests.get(f"{api.url}/v1/jobs", headers=_h(ADMIN), timeout=30)
    assert r.status_code == 200
    return r.json()


def test_the_openapi_schema_is_published_and_matches_deploy(api):
    served = requests.get(f"{api.url}/openapi.json", timeout=30).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/logs", "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/adapter"} <= set(served["paths"])
    assert served == json.loads((ROOT / "deploy/openapi.json").read_text()), \
        "deploy/openapi.json is stale: python -m lorafarm.rest.schema deploy/openapi.json"


def test_no_wrong_or_another_tenants_key_is_refused_and_nothing_is_queued(api):
    spec = _spec(api, "alice", "refused")
    for key, status, words in ((None, 401, "none was sent"), ("lf_wrong_" + "0" * 40, 401, "not valid"),
                               (BOB, 403, "tenant: 'alice' is not the tenant of the key sent ('bob')")):
        r = requests.post(f"{api.url}/v1/jobs", json=spec, headers=_h(key), timeout=30)
        assert r.status_code == status and words in r.json()["error"], r.text
        if status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{api.url}/v1/jobs", timeout=30).status_code == 401
    assert _all_jobs(api) == []


def test_bad_bodies_get_400_with_the_clis_field_lines_and_a_huge_body_413(api):
    url, h = f"{api.url}/v1/jobs", _h(ALICE)
    r = requests.post(url, data=b"{not json", headers={**h, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["problems"] == ["body: not valid JSON (line 1, column 2) — send the "
                                                             "spec as one JSON object"]
    r = requests.post(url, json=[1, 2], headers=h, timeout=30)
    assert r.status_code == 400 and "expected a JSON object" in r.json()["error"]
    bad = _spec(api, "alice", "bad")
    bad["lora"]["r"] = -1
    bad["training"]["max_stpes"] = 3
    with pytest.raises(SpecError) as cli:
        validate_spec(bad)
    r = requests.post(url, json=bad, headers=h, timeout=30)
    assert r.status_code == 400 and r.json()["problems"] == cli.value.problems
    assert any(p.startswith("lora.r:") for p in cli.value.problems)
    assert any("training.max_stpes" in p for p in cli.value.problems)
    huge = _spec(api, "alice", "huge")
    huge["description"] = "x" * (MAX_BODY_BYTES + 1)
    r = requests.post(url, json=huge, headers=h, timeout=30)
    assert r.status_code == 413 and f"larger than {MAX_BODY_BYTES} bytes" in r.json()["error"]
    chunked = requests.post(url, data=iter([b"{" + b" " * 65536] * 20), headers=h, timeout=30)  # no Content-Length
    assert chunked.status_code == 413
    # the CLI's preflight runs on the server too: data missing and a target module that does not exist,
    # both named at once; a file outside alice's reach is refused before it is read
    unrunnable = _spec(api, "alice", "unrunnable")
    unrunnable["dataset"]["uri"] = str(api.tmp / "missing.jsonl")
    unrunnable["lora"]["target_modules"] = ["qkv_fused"]
    r = requests.post(url, json=unrunnable, headers=h, timeout=120)
    assert r.status_code == 400, r.text
    problems = r.json()["problems"]
    assert any(p.startswith("dataset.uri:") for p in problems) and any("qkv_fused" in p for p in problems), problems
    r = requests.get(f"{api.url}/v1/jobs/x/logs", params={"offset": "abc"}, headers=h, timeout=30)
    assert r.status_code == 400 and r.json()["problems"][0].startswith("offset:")
    assert _all_jobs(api) == []


def test_a_full_job_from_post_to_adapter_download(api, tmp_path):
    r = requests.post(f"{api.url}/v1/jobs", json=_spec(api, "alice", "rest-job"), headers=_h(ALICE), timeout=30)
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert any(n.startswith("training.checkpoint_every_steps: 50 is longer than the run's 2 steps")
               for n in r.json()["notices"]), r.json()  # the preflight's caps come back
    assert requests.get(f"{api.url}/v1/jobs/{job}", headers=_h(BOB), timeout=30).status_code == 404
    assert requests.post(f"{api.url}/v1/jobs/{job}/cancel", headers=_h(BOB), timeout=30).status_code == 404
    assert requests.get(f"{api.url}/v1/jobs", headers=_h(BOB), timeout=30).json() == []
    with requests.get(f"{api.url}/v1/jobs/{job}/logs", params={"follow": "true"}, headers=_h(ALICE), stream=True,
                      timeout=600) as followed:
        lines = [line for line in followed.iter_lines(decode_unicode=True) if line]
    assert any("queued" in line for line in lines) and "succeeded" in lines[-1], lines
    status = requests.get(f"{api.url}/v1/jobs/{job}", headers=_h(ALICE), timeout=30).json()
    assert status["state"] == "SUCCEEDED" and status["tenant"] == "alice"
    kinds = [e["kind"] for e in requests.get(f"{api.url}/v1/jobs/{job}/events", headers=_h(ALICE), timeout=30).json()]
    assert kinds[0] == "submitted" and "started" in kinds
    listing = requests.get(f"{api.url}/v1/jobs/{job}/adapter", headers=_h(ALICE), timeout=30).json()
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {f["name"] for f in listing["files"]}
    for f in listing["files"]:
        got = requests.get(api.url + f["url"], headers=_h(ALICE), timeout=60)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == f["sha256"] == \
            got.headers["X-Content-SHA256"] and len(got.content) == f["size"]
    assert requests.get(api.url + listing["files"][0]["url"], headers=_h(BOB), timeout=30).status_code == 404
    assert requests.get(f"{api.url}/v1/jobs/{job}/adapter/files/..%2Fspec.json", headers=_h(ALICE),
                        timeout=30).status_code == 404
    # the CLI over the API: no Ray address, no store access — only the URL and the key
    env = {"LORAFARM_API_KEY": ALICE, "RAY_ADDRESS": "127.0.0.1:1"}
    pulled = api.lorafarm("pull", job, str(tmp_path / "a"), "--api", api.url, "--json", env=env, check=True)
    files = json.loads(pulled.stdout.strip().splitlines()[-1])["files"]
    for f in listing["files"]:
        data = (tmp_path / "a" / f["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] == files[f["name"]]["sha256"]


def test_the_cli_uses_the_api_with_api_or_lorafarm_api(api, tmp_path):
    spec = tmp_path / "bob.json"
    spec.write_text(json.dumps(_spec(api, "bob", "via-cli")))
    env = {"LORAFARM_API_KEY": BOB, "LORAFARM_API": api.url, "RAY_ADDRESS": "127.0.0.1:1"}  # Ray unreachable
    job = api.lorafarm_json("submit", str(spec), env=env)["job_id"]
    assert [j["job_id"] for j in api.lorafarm_json("list", env=env)] == [job]
    cancelled = api.lorafarm_json("cancel", job, env=env)
    assert cancelled["state"] == "CANCELLED"
    other = api.lorafarm("status", job, env={**env, "LORAFARM_API_KEY": ALICE})
    assert other.returncode == 1 and f"job {job!r} not found" in other.stderr
    wrong = api.lorafarm("list", env={**env, "LORAFARM_API_KEY": "nope-" + "1" * 30})
    assert wrong.returncode == 2 and "not valid" in wrong.stderr
    for key in (ALICE, BOB, ADMIN):  # never written by the cluster
        found = subprocess.run(["grep", "-rlF", key, api.store, str(api.tmp / "ray")], capture_output=True, text=True)
        assert found.stdout == "", found.stdout
