"""Ray token auth on a real `ray start --head` (RAY_AUTH_MODE=token): the job API refuses a
request without a token (401) or with a wrong one (Ray answers 403 "invalid token"), and
`ray job submit` then creates no job — counted with the right token on the server, not read
from the client's messages. With the token, a lorafarm job runs to SUCCEEDED. With auth off
every refused request here would answer 200 and create a job, so each assertion fails."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT
from ray_head import RayHead

pytestmark = pytest.mark.integration

TOKEN = "lorafarm-test-token-" + "t" * 24


@pytest.fixture(scope="module")
def head():
    tmp = Path(tempfile.mkdtemp(prefix="lft", dir="/tmp"))
    cluster = RayHead(tmp, num_cpus=3, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def _http(head, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(head.dashboard + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _jobs(head) -> list[dict]:
    status, text = _http(head, "GET", "/api/jobs/", TOKEN)
    assert status == 200, text
    return json.loads(text)


def test_without_or_with_a_wrong_token_the_job_api_refuses_and_no_job_is_created(head):
    before = len(_jobs(head))
    entry = {"entrypoint": "echo should-never-run"}
    for token, status in ((None, 401), ("wrong-" + "w" * 30, 403)):
        assert _http(head, "GET", "/api/jobs/", token)[0] == status
        code, text = _http(head, "POST", "/api/jobs/", token, entry)
        assert code == status, text
    no_token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(head.tmp / "none")}
    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong-" + "v" * 30}
    for env in (no_token, wrong):
        refused = head.ray("job", "submit", "--address", head.dashboard, "--no-wait", "--", "echo", "nope", env=env)
        assert refused.returncode != 0
    assert len(_jobs(head)) == before  # counted on the server, with the right token
    # lorafarm with a wrong token: one line saying so, not "no Ray cluster"
    out = head.lorafarm("list", env=wrong, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"the Ray cluster at {head.address} refused this client's token" in out.stderr, out.stderr[-2000:]


def test_with_the_token_a_lorafarm_job_succeeds(head):
    before = len(_jobs(head))
    entry = (f"lorafarm serve --store {head.tmp / 'store'} && lorafarm submit {ROOT / 'jobs/quickstart.yaml'} --wait "
             "--set training.max_steps=1 --set training.warmup_steps=0 --set training.eval_every_steps=0 "
             "--set resources.workers=1 --set training.seq_len=64 --set training.global_batch_size=4 "
             "--set training.micro_batch_size=4")
    accepted = head.ray("job", "submit", "--address", head.dashboard, "--", "bash", "-c", entry, timeout=600)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-2000:]
    assert "succeeded" in accepted.stdout
    assert "tenants are unauthenticated" in accepted.stdout + accepted.stderr  # no keys: serve says so
    jobs = _jobs(head)
    assert len(jobs) == before + 1 and sorted(j["status"] for j in jobs)[-1] == "SUCCEEDED"
    assert [j for j in jobs if j["entrypoint"].startswith("bash")][0]["status"] == "SUCCEEDED"
