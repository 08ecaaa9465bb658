"""A real Prometheus (Debian's `prometheus`) scrapes a real `lorafarm serve --metrics-port` on a
real `ray start --head` cluster while a tiny job trains through `lorafarm submit --wait`; then
its HTTP API holds the tenant's tokens and the succeeded job, `/metrics` no longer holds the
ended job's series, `lorafarm top --once --json` answers, and `lorafarm plot` draws the job's
recorded history from the store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, require_binary, wait_for
from ray_head import BIN, ROOT, RayHead

pytestmark = pytest.mark.integration

STEPS = 4
QUICK = ["--set", f"training.max_steps={STEPS}", "--set", "training.warmup_steps=1",
         "--set", "training.eval_every_steps=2", "--set", "resources.workers=1", "--set", "training.seq_len=64",
         "--set", "training.global_batch_size=4", "--set", "training.micro_batch_size=4"]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _get_or_none(url: str) -> str | None:
    try:
        return _get(url)
    except OSError:
        return None


class Prometheus:
    """`prometheus` in its own process group, scraping 127.0.0.1:<target_port> every second."""

    def __init__(self, binary: str, tmp: Path, target_port: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: lorafarm\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        self._log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.log_path = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.proc.poll() is None and _get_or_none(f"{self.url}/-/ready"), 60,
                       f"prometheus to be ready (log: {self.log_path})")
        except BaseException:
            self.stop()
            raise

    def query(self, expr: str) -> list[dict]:
        body = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return max(float(r["value"][1]) for r in result) if result else None

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture(scope="module")
def stack():
    prometheus = require_binary("prometheus", package="prometheus")
    tmp = Path(tempfile.mkdtemp(prefix="lfp", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head = RayHead(tmp, num_cpus=4)
    prom = None
    try:
        head.store = str(tmp / "store")
        head.metrics_port = free_port()
        served = head.lorafarm_json("serve", "--store", head.store, "--metrics-port", str(head.metrics_port),
                                    timeout=180)
        assert served["created"] is True
        head.metrics_url = f"http://127.0.0.1:{head.metrics_port}/metrics"
        wait_for(lambda: _get_or_none(head.metrics_url), 60, "the scheduler's /metrics")
        prom = Prometheus(prometheus, tmp, head.metrics_port)
        yield head, prom, tmp
    finally:
        if prom is not None:
            prom.stop()
        head.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _job_ids_in(metrics_text: str, tenant: str) -> set[str]:
    out = set()
    for line in metrics_text.splitlines():
        if line.startswith("lorafarm_train_loss{") and f'tenant="{tenant}"' in line:
            out.add(line.split('job_id="', 1)[1].split('"', 1)[0])
    return out


def test_prometheus_scrapes_a_job_and_per_job_series_end_with_it(stack, tmp_path):
    head, prom, tmp = stack
    t0 = time.time()
    wait_for(lambda: prom.value('up{job="lorafarm"}') == 1.0, 60, "prometheus's first scrape of lorafarm")

    submit = subprocess.Popen([str(BIN / "lorafarm"), "submit", str(ROOT / "jobs/quickstart.yaml"), *QUICK, "--wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=head.client_env, start_new_session=True)
    try:
        # while it trains: its per-job series are on /metrics, and `top` shows it
        def training_or_exited():
            ids = _job_ids_in(_get_or_none(head.metrics_url) or "", "demo")
            return ids or (submit.poll() is not None and {None})

        running = wait_for(training_or_exited, 420, "the job's lorafarm_train_loss series on /metrics",
                             interval=0.25)
        job_id = next(iter(running))
        assert job_id is not None, "`lorafarm submit --wait` ended before the job's series showed on /metrics: " + (
            submit.stderr.read()[-3000:] if submit.stderr else "")
        t_running = time.time()
        top = head.lorafarm_json("top", "--once", timeout=120)
        assert set(top) == {"time", "tenants", "jobs"}
        demo = next(t for t in top["tenants"] if t["tenant"] == "demo")
        assert {"quota", "usage", "queued", "running"} <= set(demo)
        for j in top["jobs"]:  # the job may have ended by the time `top` asked
            assert {"job_id", "tenant", "step", "total_steps", "loss", "tokens_per_s", "eta_s"} <= set(j)
            assert j["job_id"] == job_id and 1 <= j["step"] <= STEPS and j["total_steps"] == STEPS
        out, err = submit.communicate(timeout=300)
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGTERM)
            submit.wait(timeout=30)
    assert submit.returncode == 0, out[-2000:] + err[-3000:]
    t_done = time.time()
    assert f"submitted {job_id}" in err

    # Prometheus's view: tokens for the tenant and the job counted as succeeded
    def counted():
        tokens = prom.value('lorafarm_train_tokens_total{tenant="demo"}')
        done = prom.value('lorafarm_jobs_finished_total{tenant="demo",outcome="succeeded"}')
        return (tokens, done) if tokens and tokens > 0 and done and done >= 1 else None

    tokens, _ = wait_for(counted, 60, "prometheus to hold the job's tokens and its success", interval=1.0)
    assert tokens >= STEPS * 4  # at least one token per sequence per step
    # the per-job label arrives as job_id beside Prometheus's own job="lorafarm"
    seen = prom.query(f'max_over_time(lorafarm_train_loss{{job_id="{job_id}"}}[10m])')
    assert seen and seen[0]["metric"]["job"] == "lorafarm" and seen[0]["metric"]["tenant"] == "demo"

    # the ended job's series are gone from /metrics (and so, stale, from Prometheus's instant view)
    text = _get(head.metrics_url)
    assert f'job_id="{job_id}"' not in text
    assert 'lorafarm_train_tokens_total{tenant="demo"}' in text
    wait_for(lambda: prom.query(f'lorafarm_train_loss{{job_id="{job_id}"}}') == [], 30,
               "prometheus to mark the ended job's loss series stale")

    # the recorded history, plotted from the store alone (no scheduler involved)
    history = [json.loads(x) for x in (Path(head.store) / "demo" / job_id / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert "eval_loss" in history[1] and "eval_loss" in history[-1]  # every 2 steps; final eval on the last
    assert all("gpu_memory_bytes" not in h and "mfu" not in h for h in history)  # CPU: absent
    png = tmp_path / "loss.png"
    plotted = subprocess.run([str(BIN / "lorafarm"), "plot", job_id, "-o", str(png), "--store", head.store, "--json"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""})
    assert plotted.returncode == 0, plotted.stderr
    report = json.loads(plotted.stdout.strip().splitlines()[-1])
    assert report["steps"] == STEPS and report["eval_points"] == 3  # before training, step 2, final
    assert {"train loss", "eval loss", "tokens/s"} == set(report["curves"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    print(f"prometheus e2e: first step on /metrics {t_running - t0:.0f} s, job done {t_done - t0:.0f} s, "
          f"all checks {time.time() - t0:.0f} s after the stack was up")
