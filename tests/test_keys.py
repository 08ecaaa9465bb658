"""Tenant API keys: the tenants file lists sha256 digests per tenant and for admins; the
scheduler maps a key to its tenant, refuses a spec naming another tenant, and shows a tenant
only its own jobs. Pure tests on SchedulerCore first, then the CLI on a real served cluster."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import quickstart_spec, wait_for
from scheduler_fakes import FakeCapacity, FakeClock, FakeLauncher, make_core
from scheduler_fakes import spec as fake_spec

from lorafarm.auth import AuthError, Caller, Forbidden, hash_key
from lorafarm.errors import JobNotFound
from lorafarm.spec import TenantsError, load_tenants

ALICE, BOB, ADMIN = "lf_alice_" + "a1" * 20, "lf_bob_" + "b2" * 20, "lf_admin_" + "c3" * 20
TENANTS = f"""
admin_keys: ["{hash_key(ADMIN)}"]
tenants:
  default: {{weight: 1}}
  alice: {{keys: ["{hash_key(ALICE)}"]}}
  bob: {{keys: ["{hash_key(BOB)}"]}}
"""


# -- the tenants file and the key ring ---------------------------------------------------------


def test_keys_map_to_their_tenant_and_unknown_or_missing_keys_are_refused():
    ring = load_tenants(TENANTS).keyring()
    assert ring.identify(ALICE) == Caller("alice") and ring.identify(BOB) == Caller("bob")
    assert ring.identify(ADMIN).admin
    for key, words in ((None, "none was sent"), ("", "none was sent"), ("lf_alice_" + "a1" * 19, "not valid"),
                       (hash_key(ALICE), "not valid")):  # the digest itself is not a key
        with pytest.raises(AuthError, match=words):
            ring.identify(key)
    assert load_tenants("tenants: {default: {}}").keyring().identify(None) is None  # no keys: one team


def test_the_tenants_file_refuses_bad_digests_without_echoing_them():
    raw = "lf_raw_key_pasted_by_mistake_" + "z" * 20
    with pytest.raises(TenantsError) as e:
        load_tenants(f"admin_keys: [{hash_key(ALICE)}]\ntenants:\n  default: {{keys: [{hash_key(BOB)}]}}\n"
                     f"  alice: {{keys: [{raw}, {hash_key(ALICE)}]}}\n")
    text = str(e.value)
    assert "tenants.alice.keys[0]: is not a key digest" in text and raw not in text
    assert "tenants.alice.keys[1]: the same key digest as admin_keys[0]" in text
    assert "tenants.default.keys: a key names one tenant" in text


# -- the scheduler's core: who sees and does what --------------------------------------------------


@pytest.fixture
def core(tmp_path):
    return make_core(tmp_path / "store", TENANTS, FakeClock(), FakeLauncher(), FakeCapacity(cpus=8))


def test_a_key_submits_only_its_own_tenant_and_a_refusal_queues_nothing(core):
    ring = core.tenants.keyring()
    with pytest.raises(Forbidden, match="tenant: 'bob' is not the tenant of the key sent .'alice'.*set tenant: alice"):
        core.submit(fake_spec("bob", "sneaky"), caller=ring.identify(ALICE))
    assert core.list() == []  # nothing queued
    mine = core.submit(fake_spec("alice", "mine"), caller=ring.identify(ALICE))["job_id"]
    theirs = core.submit(fake_spec("bob", "theirs"), caller=ring.identify(ADMIN))["job_id"]  # admin: any tenant
    alice, bob, admin = ring.identify(ALICE), ring.identify(BOB), ring.identify(ADMIN)
    assert [j["job_id"] for j in core.list(caller=alice)] == [mine]
    assert [j["job_id"] for j in core.list(caller=bob)] == [theirs]
    assert {j["job_id"] for j in core.list(caller=admin)} == {mine, theirs}
    assert [j["job_id"] for j in core.list("alice", caller=admin)] == [mine]
    with pytest.raises(Forbidden, match="--tenant alice: the key sent is tenant 'bob'"):
        core.list("alice", caller=bob)
    for call in (core.status, core.events, core.cancel, core.logs_since):
        with pytest.raises(JobNotFound, match=f"job {mine!r} not found"):  # the same answer as a missing job
            call(mine, caller=bob)
    assert core.status(mine, caller=alice)["state"] == "QUEUED"
    assert core.cancel(mine, caller=admin)["state"] == "CANCELLED"
    assert [r["tenant"] for r in core.tenants_usage(caller=bob)] == ["bob"]
    assert {"alice", "bob"} <= {r["tenant"] for r in core.tenants_usage(caller=admin)}


# -- the CLI on a real served cluster ---------------------------------------------------------------

QUICK = ["--set", "training.max_steps=2", "--set", "training.warmup_steps=1", "--set", "training.eval_every_steps=0",
         "--set", "training.seq_len=64", "--set", "training.global_batch_size=4", "--set", "training.micro_batch_size=4",
         "--set", "resources.workers=1", "--set", "resources.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def cluster(serve_cluster, tmp_path_factory):
    head = serve_cluster(TENANTS, 4)
    tmp = tmp_path_factory.mktemp("keys")
    for tenant in ("alice", "bob"):
        (tmp / f"{tenant}.json").write_text(json.dumps(quickstart_spec(tenant, f"{tenant}-job", head.tmp / "small.jsonl")))
    (tmp / "bob.key").write_text(f"\n{BOB}\n")
    head.specs = tmp
    return head


def _as(key: str | None) -> dict[str, str]:
    return {"LORAFARM_API_KEY": key or ""}


def _jobs(head, key=ADMIN) -> list[dict]:
    return head.lorafarm_json("list", env=_as(key))


@pytest.mark.integration
def test_refused_keys_and_tenants_queue_nothing(cluster):
    spec = str(cluster.specs / "alice.json")
    for key, words in ((None, "requires an API key and none was sent"), ("lf_wrong_" + "d4" * 20, "not valid"),
                       (BOB, "tenant: 'alice' is not the tenant of the key sent ('bob')")):
        out = cluster.lorafarm("submit", spec, *QUICK, env=_as(key), timeout=300)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    out = cluster.lorafarm("list", env=_as(None))
    assert out.returncode == 2 and "set LORAFARM_API_KEY" in out.stderr
    assert _jobs(cluster) == []  # nothing queued
    served = cluster.lorafarm("serve", env=_as(ADMIN), check=True)
    assert "unauthenticated" not in served.stderr  # keys are on: no warning


@pytest.mark.integration
def test_tenants_see_their_own_jobs_the_admin_all_and_keys_are_never_written(cluster):
    bob = cluster.lorafarm("submit", str(cluster.specs / "bob.json"), *QUICK, "--key-file",
                           str(cluster.specs / "bob.key"), "--json", check=True)
    bob_job = json.loads(bob.stdout.strip().splitlines()[-1])["job_id"]
    # `run` on a served cluster goes through the scheduler, with alice's key: it is alice's job, quota applies
    run = cluster.lorafarm("run", str(cluster.specs / "alice.json"), *QUICK, "--json", env=_as(ALICE), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "submitted" in run.stderr and "to it (quota, trust and keys apply" in run.stderr
    alice_job = json.loads(run.stdout.strip().splitlines()[-1])["job_id"]
    assert [j["job_id"] for j in _jobs(cluster, ALICE)] == [alice_job]
    assert [j["job_id"] for j in _jobs(cluster, BOB)] == [bob_job]
    assert {j["job_id"] for j in _jobs(cluster, ADMIN)} == {alice_job, bob_job}
    peek = cluster.lorafarm("status", alice_job, env=_as(BOB))
    assert peek.returncode == 1 and f"job {alice_job!r} not found" in peek.stderr
    assert cluster.lorafarm("events", alice_job, env=_as(BOB)).returncode == 1
    assert cluster.lorafarm("cancel", alice_job, env=_as(BOB)).returncode == 1
    wait_for(lambda: cluster.lorafarm_json("status", bob_job, env=_as(BOB))["state"] == "SUCCEEDED", 300, "bob's job")
    assert cluster.lorafarm_json("status", alice_job, env=_as(ALICE))["state"] == "SUCCEEDED"
    # --direct (outside the scheduler) is for the admin key only
    direct = cluster.lorafarm("run", str(cluster.specs / "bob.json"), *QUICK, "--direct", env=_as(BOB))
    assert direct.returncode == 2 and "--direct: runs outside the scheduler's quota" in direct.stderr
    raised = cluster.specs / "raised.yaml"  # bob giving himself a bigger weight
    raised.write_text(TENANTS.replace("bob: {", "bob: {weight: 100, "))
    reload = cluster.lorafarm("serve", "--tenants", str(raised), "--reload-tenants", env=_as(BOB))
    assert reload.returncode == 2 and "needs an admin key" in reload.stderr
    # no raw key anywhere the cluster writes: the store (records, logs, config) and Ray's session logs
    for key in (ALICE, BOB, ADMIN):
        found = subprocess.run(["grep", "-rlF", key, cluster.store, str(cluster.tmp / "ray")], capture_output=True,
                               text=True)
        assert found.stdout == "", f"a raw key was written to {found.stdout}"
    assert hash_key(ALICE) in (cluster.tmp / "tenants.yaml").read_text()  # the grep can find what is there
