"""The service's failures and everyday output (issue 14): every bad flag or file given to `serve`,
`list` ... ends with one line naming it and the documented exit code, no traceback, nothing
started or written; `serve` keeps its configuration in the store and reloads a tenants file on
request; `submit --wait` follows its job across a scheduler restart; `status`, `events` and
`logs` print readable text to stdout.

Fast cases run the CLI with no Ray cluster (they must be refused before one is reached) or drive
the real SchedulerCore through the fake seams; one integration test runs a real Ray head."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import ROOT, free_port, quickstart_spec, wait_for
from scheduler_fakes import FakeClock, FakeLauncher, make_core, spec

from lorafarm.errors import SchedulerUnavailable, SpecError
from lorafarm.scheduler import config as service_config
from lorafarm.spec import load_tenants
from lorafarm.storage import Store

CLI = [sys.executable, "-m", "lorafarm.cli.main"]
UNREACHABLE = "127.0.0.1:9"  # nothing listens there: a command that connects would fail with "no Ray cluster"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "RAY_ADDRESS": UNREACHABLE, **(env or {})})


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# -- refused before anything is reached -----------------------------------------------------------

USAGE_CASES = [
    # (args, what the one line names)
    (["serve", "--hang-timeout", "-5"], "--hang-timeout"),
    (["serve", "--hang-timeout", "0"], "--hang-timeout"),
    (["serve", "--hang-timeout", "inf"], "--hang-timeout"),
    (["serve", "--hang-timeout", "nan"], "--hang-timeout"),
    (["serve", "--reserve-cpus", "-3"], "--reserve-cpus"),
    (["serve", "--reserve-cpus", "inf"], "--reserve-cpus"),
    (["serve", "--metrics-port", "0"], "--metrics-port"),
    (["serve", "--metrics-port", "70000"], "--metrics-port"),
    (["serve", "--metrics-port", "http"], "--metrics-port"),
    (["serve", "--tenants", "{tmp}/missing.yaml"], "missing.yaml"),
    (["serve", "--tenants", "{tmp}/binary.yaml"], "not UTF-8"),
    (["serve", "--tenants", "{tmp}"], "is a directory"),
    (["serve", "--tenants", "{tmp}/bad.yaml"], "tenants.demo.weight"),
    (["serve", "--reload-tenants"], "--reload-tenants"),
    (["list", "--state", "BOGUS"], "QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED"),
]


@pytest.mark.parametrize(("args", "names"), USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_bad_service_input_is_one_line_exit_2_and_nothing_happens(tmp_path, args, names):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00tenants")
    (tmp_path / "bad.yaml").write_text("tenants:\n  default: {weight: 1}\n  demo: {weight: -1}\n")
    store = tmp_path / "store"
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "serve":
        argv += ["--store", str(store)]
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert names in line, line
    assert "no Ray cluster" not in proc.stderr  # refused before the cluster was reached
    assert not store.exists()  # nothing written


def test_flag_ranges_are_named_with_the_fix():
    proc = _cli("serve", "--hang-timeout", "-5")
    assert "use a finite number > 0" in _one_error_line(proc)
    proc = _cli("serve", "--metrics-port", "70000")
    assert "1 and <= 65535" in _one_error_line(proc)


def test_verbose_is_a_global_flag_for_every_command():
    from lorafarm.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "status", "j"]).verbose
    assert parser.parse_args(["status", "j", "--verbose"]).verbose
    assert not parser.parse_args(["status", "j"]).verbose


def test_quiet_ray_sets_ray_log_levels_unless_verbose(monkeypatch):
    from lorafarm.cli.output import quiet_ray
    from lorafarm.rayio import verbose

    for name in ("RAY_LOGGER_LEVEL", "LORAFARM_VERBOSE"):
        monkeypatch.delenv(name, raising=False)
    quiet_ray(False)
    assert os.environ["RAY_LOGGER_LEVEL"] == "warning"
    assert not verbose()
    monkeypatch.delenv("RAY_LOGGER_LEVEL")
    quiet_ray(True)
    assert verbose() and "RAY_LOGGER_LEVEL" not in os.environ


# -- the port check and the token refusal, with no scheduler ---------------------------------------


def test_a_port_in_use_is_named():
    from lorafarm.errors import LorafarmError

    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(LorafarmError, match=f"--metrics-port {port}: this node cannot listen on it"):
            service_config.check_port_free(port, "this node")
    service_config.check_port_free(free_port(), "this node")  # a free one passes


def test_a_store_the_cluster_cannot_read_says_where_the_credentials_must_go():
    from lorafarm.scheduler.service import _start_failure, _StoreUnreachable

    line = _start_failure(_StoreUnreachable("NoCredentialsError: Unable to locate credentials"), "s3://b/lf")
    assert "cannot read store s3://b/lf: NoCredentialsError" in line
    assert "credentials set only here do not reach it" in line and "AWS_ACCESS_KEY_ID" in line
    assert "\n" not in line
    assert _start_failure(SpecError(["--hang-timeout: -5.0 must be ..."]), "/s") == "--hang-timeout: -5.0 must be ..."


def test_refused_token_probe_is_false_where_nothing_listens():
    from lorafarm.scheduler.client import auth_message, refused_token

    assert refused_token(UNREACHABLE) is False
    message = auth_message("10.0.0.1:6379")
    assert "the Ray cluster at 10.0.0.1:6379 refused this client's token" in message and "RAY_AUTH_TOKEN" in message


# -- the configuration the store keeps ---------------------------------------------------------------


def test_service_config_given_over_saved_over_defaults(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    assert service_config.load(store) is None
    first = service_config.merge(None, "tenants: {}\n", 9464, 60.0, 1.0)
    service_config.save(store, first)
    assert json.loads((tmp_path / "store/_service/config.json").read_text())["metrics_port"] == 9464
    saved = service_config.load(store)
    assert saved == first
    plain = service_config.merge(saved)  # a plain `serve` after a restart: everything as before
    assert plain == first
    changed = service_config.merge(saved, hang_timeout_s=120.0)
    assert changed.hang_timeout_s == 120.0 and changed.metrics_port == 9464 and changed.tenants_text == "tenants: {}\n"
    assert service_config.merge(None) == service_config.ServiceConfig()
    with pytest.raises(SpecError) as e:
        service_config.merge(None, hang_timeout_s=float("inf"), reserve_cpus=-3.0, metrics_port=0)
    assert [p.split(":")[0] for p in e.value.problems] == ["--hang-timeout", "--reserve-cpus", "--metrics-port"]


def test_a_corrupt_saved_config_falls_back_to_defaults(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    (tmp_path / "store/_service").mkdir(parents=True)
    for text in ("{not json", '{"hang_timeout_s": -5}', '{"hang_timeout_s": "x", "reserve_cpus": []}'):
        (tmp_path / "store/_service/config.json").write_text(text)
        assert service_config.load(store) is None


# -- the core: tenants reloaded, states checked ------------------------------------------------------


def test_reload_tenants_swaps_the_config_and_keeps_jobs(tmp_path):
    core = make_core(tmp_path / "store", "tenants:\n  default: {weight: 1}\n  demo: {weight: 1}\n")
    job = core.submit(spec())["job_id"]
    core.reload_tenants(load_tenants("tenants:\n  default: {weight: 1}\n  demo: {weight: 5}\n  other: {weight: 1}\n"))
    assert {r["tenant"]: r["weight"] for r in core.tenants_usage()} == {"demo": 5, "other": 1}
    assert core.status(job)["state"] == "QUEUED"


def test_list_names_the_valid_states(tmp_path):
    core = make_core(tmp_path / "store")
    core.submit(spec())
    assert len(core.list(state="queued")) == 1
    with pytest.raises(SpecError, match="use one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED"):
        core.list(state="BOGUS")


def test_data_ready_is_logged_as_text_not_a_dict(tmp_path):
    from lorafarm.events import DataReady

    launcher = FakeLauncher()
    core = make_core(tmp_path / "store", clock=FakeClock(), launcher=launcher)
    job = core.submit(spec())["job_id"]
    core.tick()
    masked = ["/d/small.jsonl:1", "/d/small.jsonl:3"]
    warning = "dataset: 2 of 48 examples (4.2%) lose all their labels and are dropped (/d/small.jsonl:1; …)"
    core.report(job, DataReady(stats={  # the fields prepare() really reports, lists and dicts among them
        "examples": 48, "skipped_bad_rows": 0, "bad_row_problems": {}, "all_masked_dropped": 2,
        "all_masked_rows": masked, "warnings": [warning], "truncated": 48, "tokens": 13_415_904, "label_tokens": 468,
        "rows": 35, "eval_examples": 0, "cache_files": 1}))
    data, warned = core.logs_since(job)[0][-2:]
    assert data.endswith("data: 48 examples, 2 all_masked_dropped, 48 truncated, 13415904 tokens, 468 label_tokens, "
                         "35 rows, 1 cache_files"), data
    assert not any(c in data for c in "{[") and "skipped_bad_rows" not in data
    assert warned.endswith(f"warning: {warning}")


# -- following a job across a scheduler restart (the CLI's loop, the scheduler faked) ---------------


class FlakyScheduler:
    """`status` answers RUNNING, then fails as a dead scheduler would for ``gone`` calls, then
    answers the recovered job (QUEUED, RUNNING, SUCCEEDED)."""

    def __init__(self, gone: int):
        self.answers = (["RUNNING"] + ["gone"] * gone + ["QUEUED", "RUNNING", "SUCCEEDED"])
        self.calls = 0

    def __call__(self, method: str, *args, timeout: float = 60.0):
        assert method == "status"
        state = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if state == "gone":
            raise SchedulerUnavailable("the lorafarm scheduler died — restart it with `lorafarm serve`")
        return {"job_id": "j1", "state": state, "progress": {}, "reason": None,
                "adapter_uri": "/store/demo/j1/adapter" if state == "SUCCEEDED" else None}


def _follow(monkeypatch, flaky: FlakyScheduler, restart_wait_s: float):
    from rich.console import Console

    from lorafarm import api
    from lorafarm.cli import service_cmds

    monkeypatch.setattr(api, "scheduler_call", flaky)
    monkeypatch.setattr(service_cmds.time, "sleep", lambda s: None)
    return service_cmds.wait_for("j1", Console(stderr=True), as_json=True, cancel_on_signal=False,
                                 restart_wait_s=restart_wait_s)


def test_wait_follows_the_job_across_a_restart(monkeypatch, capsys):
    flaky = FlakyScheduler(gone=3)
    assert _follow(monkeypatch, flaky, restart_wait_s=120) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["state"] == "SUCCEEDED"
    assert "waiting up to 120 s" in out.err and "the scheduler is back" in out.err


def test_wait_gives_up_after_the_bound(monkeypatch):
    clock = iter(range(0, 10_000, 50))
    monkeypatch.setattr("lorafarm.cli.service_cmds.time.monotonic", lambda: next(clock))
    with pytest.raises(SchedulerUnavailable, match="stopped following j1 after waiting 120 s"):
        _follow(monkeypatch, FlakyScheduler(gone=100), restart_wait_s=120)


# -- status as text ------------------------------------------------------------------------------------


def test_status_text_has_times_durations_progress_and_metrics():
    from lorafarm.cli.service_cmds import duration, status_lines

    t0 = 1_700_000_000.0
    s = {"job_id": "pirate-1", "tenant": "demo", "name": "pirate", "state": "SUCCEEDED", "priority": "normal",
         "workers": 2, "adapter_uri": "/s/demo/pirate-1/adapter", "reason": None, "submitted_at": t0,
         "started_at": t0 + 5, "ended_at": t0 + 125, "attempts": 1, "last_checkpoint_step": 50,
         "progress": {"step": 50, "total_steps": 100, "loss": 1.23456, "tokens_per_s": 12345.6, "step_time_s": 0.2,
                      "tokens_seen": 51200},
         "metrics": {"final_train_loss": 1.2, "trainable_params": 1000}}
    text = "\n".join(status_lines(s, t0 + 200))
    assert "{" not in text and "'" not in text  # not a Python dict
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)) in text
    assert "(queued 5.0 s)" in text and "(ran 2 min 0 s)" in text
    assert "step 50/100 (50%) · loss 1.2346 · 12,346 tok/s · 0.20 s/step · 51,200 tokens" in text
    assert "final_train_loss 1.2, trainable_params 1,000" in text and "adapter:" in text
    running = {**s, "state": "RUNNING", "ended_at": None}
    assert any(line.startswith("running for:") and "3 min 15 s" in line for line in status_lines(running, t0 + 200))
    assert duration(3 * 3600 + 60) == "3 h 1 min" and duration(2.5) == "2.5 s"
    packed = "\n".join(status_lines({**s, "pack_members": 3, "metrics": {"co_trained": {"members": 3}}}, t0 + 200))
    assert "co-trained: in a pack of 3 jobs" in packed and "co_trained members 3" in packed and "{" not in packed


# -- a real Ray head: the scheduler killed while `submit --wait` follows, served again -------------

TENANTS = textwrap.dedent("""
    tenants:
      default: {weight: 1}
      demo: {weight: 1}
""")


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_restart_port_and_config_on_a_real_cluster(serve_cluster, s3_bucket, tmp_path):
    # the cluster starts without the S3 credentials that this process (the client's shell) has
    aws = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        head = serve_cluster(TENANTS, 3)
    finally:
        os.environ.update(aws)
    spec_file = tmp_path / "job.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(quickstart_spec(
        "demo", "restart", head.tmp / "small.jsonl",
        # 24 paced steps (2 s each): the scheduler is killed after step 2, long before the last
        training={"max_steps": 24, "warmup_steps": 1, "eval_every_steps": 0, "seq_len": 64, "global_batch_size": 4,
                  "micro_batch_size": 4, "checkpoint_every_steps": 2},
        resources={"workers": 1, "cpus_per_worker": 1})))

    listed = head.lorafarm("list", "--state", "bogus")
    assert listed.returncode == 2 and "use one of QUEUED" in _one_error_line(listed)

    follower = subprocess.Popen([str(Path(sys.executable).parent / "lorafarm"), "submit", str(spec_file), "--wait"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=head.client_env)
    try:
        def job_id():
            jobs = head.lorafarm_json("list")
            return jobs[0]["job_id"] if jobs else None

        job = wait_for(job_id, 120, "the job to be queued")
        wait_for(lambda: (head.lorafarm_json("status", job).get("last_checkpoint_step") or 0) >= 2, 400,
                 "a checkpoint")
        kill = head.python("import ray\nray.init(log_to_driver=False)\n"
                           "ray.kill(ray.get_actor('scheduler', namespace='lorafarm'), no_restart=True)\n")
        assert kill.returncode == 0, kill.stderr[-2000:]

        # with no scheduler: a metrics port in use is one line, and nothing is started
        with socket.socket() as held:
            held.bind(("0.0.0.0", 0))
            held.listen()
            port = held.getsockname()[1]
            taken = head.lorafarm("serve", "--store", head.store, "--metrics-port", str(port))
        assert taken.returncode == 1 and f"--metrics-port {port}" in _one_error_line(taken)
        assert head.lorafarm("list").returncode == 1  # still none running

        # an S3 store whose credentials are only in this shell: the scheduler cannot reach it
        s3 = head.lorafarm("serve", "--store", f"s3://{s3_bucket}/lorafarm", env=aws, timeout=300)
        assert s3.returncode == 1, s3.stderr[-2000:]
        line = _one_error_line(s3)
        assert f"cannot read store s3://{s3_bucket}/lorafarm" in line and "AWS_ACCESS_KEY_ID" in line, line
        assert "this shell has AWS_ACCESS_KEY_ID" in line
        import boto3

        listed = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=s3_bucket)
        assert listed.get("KeyCount", 0) == 0  # nothing written
        assert head.lorafarm("list").returncode == 1  # and no scheduler left behind

        # a plain `serve` reuses the configuration the first one was started with
        served = head.lorafarm_json("serve", "--store", head.store)
        assert served["created"] is True and served["store"] == head.store
        assert served["config"]["reserve_cpus"] == 1 and served["config"]["tenants"] is True

        out, err = follower.communicate(timeout=900)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, out[-2000:] + err[-3000:]
    tb = (out + err).find("Traceback")
    assert tb < 0, (out + err)[max(0, tb - 1500):tb + 3000]
    assert "the scheduler is back" in err, err[-3000:]
    final = head.lorafarm_json("status", job)
    assert final["state"] == "SUCCEEDED" and final["adapter_uri"]

    # everyday output: to stdout, as text, without Ray's INFO lines
    status = head.lorafarm("status", job)
    assert status.returncode == 0 and "state:" in status.stdout and "submitted:" in status.stdout, status.stderr
    assert "progress:" in status.stdout and " INFO " not in status.stderr
    events = head.lorafarm("events", job)
    assert "submitted" in events.stdout and "started" in events.stdout
    logs = head.lorafarm("logs", job)
    assert "step " in logs.stdout and "{'" not in logs.stdout
    assert "recovered" in [json.loads(line)["kind"] for line in head.lorafarm("events", job, "--json").stdout.splitlines()]

    # serve while one runs: another store is reported as what it really serves; another tenants
    # file is refused unless reloaded; a bad one is refused and the old one kept
    other = head.lorafarm("serve", "--store", str(tmp_path / "elsewhere"), "--json")
    assert other.returncode == 0 and json.loads(other.stdout.splitlines()[-1])["store"] == head.store
    assert "ignored: the running scheduler serves" in other.stderr
    (tmp_path / "new.yaml").write_text(TENANTS + "  newcomer: {weight: 3}\n")
    (tmp_path / "bad.yaml").write_text("tenants:\n  default: {weight: 1}\n  demo: {weight: -1}\n")
    refused = head.lorafarm("serve", "--tenants", str(tmp_path / "new.yaml"))
    assert refused.returncode == 2 and "--reload-tenants" in _one_error_line(refused)
    bad = head.lorafarm("serve", "--tenants", str(tmp_path / "bad.yaml"), "--reload-tenants")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "newcomer" not in {r["tenant"] for r in head.lorafarm_json("tenants")}
    reloaded = head.lorafarm_json("serve", "--tenants", str(tmp_path / "new.yaml"), "--reload-tenants")
    assert reloaded["reloaded"] is True
    assert {r["tenant"]: r["weight"] for r in head.lorafarm_json("tenants")}["newcomer"] == 3
    saved = json.loads((Path(head.store) / "_service/config.json").read_text())
    assert "newcomer" in saved["tenants_text"]
