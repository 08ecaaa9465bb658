"""Metrics, operator assets and tenant views without a cluster: the Prometheus registry (per-job
series dropped on end, GPU-only series), promtool on the alert rules, every Grafana query naming
an exported metric, the history file, `lorafarm plot` and `lorafarm top`'s snapshot."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import require_binary
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lorafarm.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _samples(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(m.registry).decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _step(step: int, **extra) -> dict:
    return {"kind": "step", "step": step, "total_steps": 10, "loss": 2.0 - 0.1 * step, "lr": 1e-3,
            "tokens_per_s": 1000.0, "step_time_s": 0.2, "tokens_seen": 512 * step, **extra}


# ---------------------------------------------------------------- the registry
def test_per_job_series_are_gone_after_job_ended_and_tenant_series_stay():
    m = Metrics()
    m.step("acme", "a-1", _step(1, eval_loss=2.5), 512)
    m.step("acme", "a-1", _step(2), 512)
    m.step("beta", "b-1", _step(1), 512)
    per_job = {(n, s["job_id"]) for n, s, _ in _samples(m) if "job_id" in s}
    assert {("lorafarm_train_loss", "a-1"), ("lorafarm_eval_loss", "a-1"), ("lorafarm_job_step", "a-1"),
            ("lorafarm_job_total_steps", "a-1"), ("lorafarm_job_tokens_per_second", "a-1"),
            ("lorafarm_train_loss", "b-1")} <= per_job

    m.job_ended("acme", "a-1", "succeeded", 42.0, 1234)
    after = _samples(m)
    assert not [x for x in after if x[1].get("job_id") == "a-1"], "an ended job's series must go"
    assert [x for x in after if x[1].get("job_id") == "b-1"], "other jobs' series stay"
    value = {(n, tuple(sorted(s.items()))): v for n, s, v in after}
    assert value[("lorafarm_train_tokens_total", (("tenant", "acme"),))] == 1024
    assert value[("lorafarm_jobs_finished_total", (("outcome", "succeeded"), ("tenant", "acme")))] == 1
    assert value[("lorafarm_adapter_bytes_total", (("tenant", "acme"),))] == 1234
    assert value[("lorafarm_job_duration_seconds_count", (("outcome", "succeeded"), ("tenant", "acme")))] == 1
    m.job_ended("beta", "b-1", "failed", None, 0)
    assert not [x for x in _samples(m) if "job_id" in x[1]]
    m.drop_job("never-seen")  # harmless


def test_no_label_collides_with_prometheus_target_labels():
    """Prometheus adds `job` and `instance` to every scraped series; ours would become `exported_job`."""
    m = Metrics()
    m.step("acme", "a-1", _step(1, eval_loss=2.0, gpu_memory_bytes=1.0, mfu=0.1), 512)
    m.job_ended("acme", "a-2", "failed", 1.0, 10)
    labels = {k for _, lab, _ in _samples(m) for k in lab}
    assert "job_id" in labels and not labels & {"job", "instance"}


def test_gpu_series_only_when_the_event_carries_them():
    m = Metrics()
    m.step("acme", "cpu-job", _step(1), 512)
    m.step("acme", "gpu-job", _step(1, gpu_memory_bytes=3.5e9, mfu=0.42), 512)
    s = {(n, lab.get("job_id")): v for n, lab, v in _samples(m)}
    assert s[("lorafarm_job_gpu_memory_bytes", "gpu-job")] == 3.5e9
    assert s[("lorafarm_job_mfu_ratio", "gpu-job")] == pytest.approx(0.42)
    assert ("lorafarm_job_gpu_memory_bytes", "cpu-job") not in s and ("lorafarm_job_mfu_ratio", "cpu-job") not in s
    m.job_ended("acme", "gpu-job", "cancelled", 1.0, 0)
    assert not [n for n, lab, _ in _samples(m) if lab.get("job_id") == "gpu-job"]


def test_scheduler_report_feeds_metrics_and_progress_with_gpu_fields(tmp_path):
    """SchedulerCore.report() keeps the GPU fields in the job's progress (for `top`)."""
    from scheduler_fakes import make_core, spec

    from lorafarm.events import Step

    core = make_core(tmp_path / "store")  # fake clock, launcher and capacity: no Ray
    job = core.submit(spec(tenant="acme"))["job_id"]
    core.tick()
    for n, mfu in ((1, 0.3), (2, 0.31)):
        core.report(job, Step(step=n, total_steps=10, loss=2.0 - 0.1 * n, lr=1e-3, tokens_per_s=1000.0,
                              step_time_s=0.2, tokens_seen=512 * n, gpu_memory_bytes=2_000_000_000, mfu=mfu))
    p = core.status(job)["progress"]
    assert p["step"] == 2 and p["mfu"] == 0.31 and p["gpu_memory_bytes"] == 2e9
    s = {(n, tuple(sorted(lab.items()))): v for n, lab, v in _samples(core.metrics)}
    assert s[("lorafarm_train_tokens_total", (("tenant", "acme"),))] == 1024  # deltas of tokens_seen


# ---------------------------------------------------------------- accelerator figures
def test_peak_flops_table_env_override_and_mfu():
    from lorafarm.ops.accel import mfu, peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", env={}) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", env={}) == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", env={}) == 312e12
    assert peak_flops("NVIDIA A10G", env={}) is None  # unpublished: no guess
    assert peak_flops("Some Future GPU", env={}) is None
    assert peak_flops("Some Future GPU", env={"LORAFARM_PEAK_FLOPS": "1.5e15"}) == 1.5e15
    assert peak_flops("NVIDIA H100", env={"LORAFARM_PEAK_FLOPS": "nonsense"}) == 989e12
    # 1e9 params at 10k tokens/s on 2 devices of 100 TFLOP/s: 6e13 / 2e14 = 0.3
    assert mfu(10**9, 10_000.0, 2, 100e12) == pytest.approx(0.3)
    assert mfu(10**9, 10_000.0, 2, None) is None


def test_gpu_step_metrics_absent_on_cpu_and_present_on_cuda(monkeypatch):
    import torch

    from lorafarm.ops.accel import gpu_step_metrics

    assert gpu_step_metrics(torch.device("cpu"), 10**6, 1000.0, 1) == {}
    assert gpu_step_metrics("cpu", 10**6, 1000.0, 1) == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 7 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.delenv("LORAFARM_PEAK_FLOPS", raising=False)
    out = gpu_step_metrics(torch.device("cuda", 0), 8 * 10**9, 20_000.0, 1)
    assert out["gpu_memory_bytes"] == 7 * 2**30
    assert out["mfu"] == pytest.approx(6 * 8e9 * 2e4 / 989e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    assert set(gpu_step_metrics(torch.device("cuda", 0), 8 * 10**9, 20_000.0, 1)) == {"gpu_memory_bytes"}


# ---------------------------------------------------------------- promtool
def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = require_binary("promtool", package="prometheus")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules():
    proc = _promtool("check", "rules", "deploy/prometheus/alerts.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules():
    proc = _promtool("test", "rules", "deploy/prometheus/alerts_test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# ---------------------------------------------------------------- every query names an exported metric
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def exported_metric_names() -> set[str]:
    """Every sample name the registry can expose, incl. _total/_created/_bucket/_sum/_count."""
    names = set()
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            names |= {fam.name + "_total", fam.name + "_created"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif fam.type == "summary":
            names |= {fam.name + s for s in ("", "_sum", "_count", "_created")}
        else:
            names.add(fam.name)
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges and grouping label
    lists removed; function names are identifiers followed by '(')."""
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,.*\)\s*", expr)  # Grafana template query
    if m:
        return {m.group(1)}
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", "", e)
    names = set()
    for tok in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", e):
        word = tok.group(1)
        if word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", word):
            names.add(word)
    return names


def _grafana_queries(obj) -> list[str]:
    out = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            # "query": "prometheus" is a datasource variable's type, not PromQL
            if isinstance(value, str) and (key in ("expr", "definition") or (key == "query" and value != "prometheus")):
                out.append(value)
            else:
                out += _grafana_queries(value)
    elif isinstance(obj, list):
        for v in obj:
            out += _grafana_queries(v)
    return out


def test_metric_name_parser():
    assert metric_names_in('sum by (tenant) (rate(lorafarm_x_total{tenant=~"$tenant"}[5m]))') == {"lorafarm_x_total"}
    assert metric_names_in("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m])))") == {"a_bucket"}
    assert metric_names_in('a / on (tenant, job) b{job="x"} > 0.5 and c') == {"a", "b", "c"}
    assert metric_names_in("increase(x[$__range])") == {"x"}
    assert metric_names_in("label_values(lorafarm_jobs, tenant)") == {"lorafarm_jobs"}
    assert metric_names_in("(a != a) or (abs(a) == +Inf)") == {"a"}


def test_every_grafana_query_names_an_exported_metric():
    dashboard = json.loads((ROOT / "deploy/grafana/lorafarm.json").read_text())
    queries = _grafana_queries(dashboard)
    assert len(queries) >= 15
    exported = exported_metric_names()
    used: set[str] = set()
    for q in queries:
        names = metric_names_in(q)
        assert names, f"no metric found in {q!r}"
        unknown = names - exported
        assert not unknown, f"{q!r} names metrics lorafarm does not export: {sorted(unknown)}"
        used |= names
    # the dashboard covers what the issue asks for
    for name in ("lorafarm_jobs", "lorafarm_train_tokens_total", "lorafarm_train_loss", "lorafarm_eval_loss",
                 "lorafarm_gpu_seconds_total", "lorafarm_jobs_finished_total", "lorafarm_job_mfu_ratio",
                 "lorafarm_job_gpu_memory_bytes"):
        assert name in used, name
    assert dashboard["templating"]["list"] and any(v["name"] == "tenant" for v in dashboard["templating"]["list"])


def test_every_alert_names_an_exported_metric():
    import yaml

    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    exported = exported_metric_names() | {"up"}  # `up` is Prometheus's own
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"LorafarmSchedulerDown", "LorafarmJobStuckQueued", "LorafarmLossNaN", "LorafarmLossRising",
            "LorafarmTenantAtQuota", "LorafarmWorkerFailureRate"} <= {r["alert"] for r in alerts}
    for rule in alerts:
        unknown = metric_names_in(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"


def test_operator_assets_are_copied_into_the_chart():
    for src, copy in (("deploy/grafana/lorafarm.json", "helm/lorafarm/files/lorafarm.json"),
                      ("deploy/prometheus/alerts.yaml", "helm/lorafarm/files/alerts.yaml")):
        assert (ROOT / src).read_bytes() == (ROOT / copy).read_bytes(), f"copy {src} to {copy}"


# ---------------------------------------------------------------- history
def _history_lines(n: int = 12, eval_every: int = 4) -> list[dict]:
    lines = []
    for s in range(1, n + 1):
        r = {"step": s, "total_steps": n, "loss": 3.0 / s ** 0.5, "lr": 1e-3, "tokens_per_s": 900.0 + 10 * s,
             "step_time_s": 0.3, "tokens_seen": 256 * s}
        if s % eval_every == 0:
            r["eval_loss"] = 3.2 / s ** 0.5
        lines.append(r)
    return lines


def test_history_file_is_rewritten_while_training_and_finished_with_the_final_eval(tmp_path, monkeypatch):
    from lorafarm.ops import history
    from lorafarm.ops.history import parse_history

    uri = str(tmp_path / "history.jsonl")
    h = history.HistoryWriter(str(tmp_path))
    monkeypatch.setattr(history, "FLUSH_EVERY_S", 0.0)
    h.add({"step": 1, "loss": 2.0})
    assert parse_history(Path(uri).read_text()) == [{"step": 1, "loss": 2.0}]  # a cancel now keeps step 1
    monkeypatch.setattr(history, "FLUSH_EVERY_S", 3600.0)
    h.add({"step": 2, "loss": 1.9})
    assert len(parse_history(Path(uri).read_text())) == 1  # not due yet
    h.finish([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.9}, {"step": 3, "loss": 1.8}],
             {"final_eval_loss": 1.95})
    h.flush()
    lines = parse_history(Path(uri).read_text())
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[-1]["eval_loss"] == 1.95
    assert parse_history('{"step": 2}\n\n{"broken\n{"no_step": 1}\n{"step": 1}\n') == [{"step": 1}, {"step": 2}]


def _store_with_job(tmp_path: Path, tenant: str = "demo", job: str = "quick-20250101-000000-abcd",
                    lines: list[dict] | None = None) -> tuple[Path, str]:
    store = tmp_path / "store"
    job_dir = store / tenant / job
    (job_dir / "adapter").mkdir(parents=True)
    (job_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (lines or _history_lines())))
    (job_dir / "adapter" / "lorafarm.json").write_text(json.dumps({"metrics": {"initial_eval_loss": 3.5}}))
    return store, job


def test_plot_history_writes_a_png_with_both_loss_curves_and_throughput(tmp_path):
    from lorafarm.ops.history import load_job_history
    from lorafarm.ops.plot import lines_by_label, plot_history

    store, job = _store_with_job(tmp_path)
    history = load_job_history(job, str(store))  # tenant found by searching the store
    assert history.initial_eval_loss == 3.5 and len(history.steps) == 12
    out = tmp_path / "plots" / "loss.png"
    fig = plot_history(history, out)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    lines = lines_by_label(fig)
    assert set(lines) == {"train loss", "eval loss", "tokens/s"}
    assert lines["train loss"][0] == list(range(1, 13))
    assert lines["eval loss"][0] == [0, 4, 8, 12]  # before training (manifest) + every 4th step
    assert lines["eval loss"][1][0] == 3.5
    assert lines["tokens/s"][1][-1] == pytest.approx(1020.0)


def test_plot_cli_from_the_store_alone(tmp_path, capsys):
    from lorafarm.cli.main import main

    store, job = _store_with_job(tmp_path, lines=_history_lines(5, eval_every=100))
    out = tmp_path / "p.png"
    assert main(["plot", job, "-o", str(out), "--store", str(store), "--tenant", "demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 5 and report["eval_points"] == 1  # only the manifest's initial eval
    assert set(report["curves"]) == {"train loss", "eval loss", "tokens/s"}
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert main(["plot", "no-such-job", "-o", str(out), "--store", str(store)]) != 0
    assert main(["plot", job, "-o", str(tmp_path / "p.svg"), "--store", str(store)]) == 2


# ---------------------------------------------------------------- top
def _scheduler_answers():
    tenants = [{"tenant": "acme", "weight": 1.0, "quota": {"workers": 4, "gpus": None}, "queued": 1, "running": 1,
                "usage": {"workers": 2, "cpus": 2, "gpus": 0}},
               {"tenant": "beta", "weight": 2.0, "quota": {}, "queued": 0, "running": 0,
                "usage": {"workers": 0, "cpus": 0, "gpus": 0}}]
    jobs = [{"job_id": "a-1", "tenant": "acme", "name": "a", "state": "RUNNING", "priority": "normal", "workers": 2,
             "started_at": 900.0, "progress": {"step": 40, "total_steps": 100, "loss": 1.23, "tokens_per_s": 5000.0,
                                               "step_time_s": 0.5, "eval_loss": 1.3}},
            {"job_id": "a-2", "tenant": "acme", "name": "a", "state": "RUNNING", "priority": "normal", "workers": 1,
             "started_at": 990.0, "progress": {}},
            {"job_id": "a-0", "tenant": "acme", "name": "a", "state": "SUCCEEDED", "workers": 1, "progress": {}}]
    return tenants, jobs


def test_top_snapshot_shape_and_render():
    from rich.console import Console

    from lorafarm.ops.top import render, snapshot

    snap = snapshot(*_scheduler_answers(), now=1000.0)
    assert set(snap) == {"time", "tenants", "jobs"}
    assert [t["tenant"] for t in snap["tenants"]] == ["acme", "beta"]
    assert set(snap["tenants"][0]) == {"tenant", "weight", "quota", "usage", "queued", "running"}
    assert [j["job_id"] for j in snap["jobs"]] == ["a-1", "a-2"]  # running only
    j = snap["jobs"][0]
    assert {"job_id", "tenant", "step", "total_steps", "loss", "eval_loss", "tokens_per_s", "eta_s",
            "running_s", "workers", "gpu_memory_bytes", "mfu"} <= set(j)
    assert j["eta_s"] == pytest.approx(60 * 0.5) and j["running_s"] == 100.0 and j["mfu"] is None
    assert snap["jobs"][1]["eta_s"] is None and snap["jobs"][1]["step"] is None
    assert snapshot(*_scheduler_answers(), now=1000.0, tenant="beta")["jobs"] == []
    json.dumps(snap)
    console = Console(record=True, width=160)
    console.print(render(snap))
    text = console.export_text()
    assert "a-1" in text and "40/100" in text and "1.2300" in text and "0:30" in text and "MFU" not in text
    snap["jobs"][0].update(gpu_memory_bytes=3 * 2**30, mfu=0.41)
    console.print(render(snap))
    text = console.export_text()
    assert "3.0 GiB" in text and "41.0%" in text


def test_top_once_json_cli(monkeypatch, capsys):
    from lorafarm.cli.main import main
    from lorafarm.scheduler import client

    tenants, jobs = _scheduler_answers()
    answers = {"tenants": tenants, "list": [j for j in jobs if j["state"] == "RUNNING"]}
    monkeypatch.setattr(client, "call", lambda method, *a, **k: answers[method])
    assert main(["top", "--once", "--json"]) == 0
    snap = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(snap) == {"time", "tenants", "jobs"} and len(snap["jobs"]) == 2
    assert main(["top", "--once"]) == 0
    assert "a-1" in capsys.readouterr().out


def test_ops_commands_are_registered_beside_the_others():
    from lorafarm.cli import main as cli_main
    from lorafarm.cli import ops_cmds

    assert ops_cmds in cli_main.COMMAND_MODULES
    parser = cli_main.build_parser()
    assert parser.parse_args(["plot", "j", "-o", "p.png"]).handler is ops_cmds.plot
    assert parser.parse_args(["top"]).handler is ops_cmds.top
