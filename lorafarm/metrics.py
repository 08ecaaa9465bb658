"""Prometheus metrics of the scheduler (prefix ``lorafarm_``), one registry per scheduler.

Label values come only from validated names (tenant, job id, state, outcome), and per-job
series (``{tenant, job_id}``: loss, eval loss, step, tokens/s, GPU memory, MFU) are removed when
the job ends, so cardinality stays bounded by running jobs. The job's label is ``job_id``, not
``job``: Prometheus attaches its own ``job`` (and ``instance``) target label to every scraped
series and would rename ours to ``exported_job``.

Cost of a scrape (``bench/metrics_bench.py``): see the figure in that file's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
ESTIMATE_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.up = Gauge("lorafarm_scheduler_up", "1 while the scheduler runs", registry=r)
        self.jobs = Gauge("lorafarm_jobs", "Jobs by tenant and state", ["tenant", "state"], registry=r)
        self.finished = Counter("lorafarm_jobs_finished_total", "Jobs ended, by outcome", ["tenant", "outcome"],
                                registry=r)
        self.queue_wait = Histogram("lorafarm_queue_wait_seconds", "Submit to start", ["tenant"],
                                    buckets=WAIT_BUCKETS, registry=r)
        self.duration = Histogram("lorafarm_job_duration_seconds", "Start to end, by outcome", ["tenant", "outcome"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter("lorafarm_train_tokens_total", "Tokens trained", ["tenant"], registry=r)
        self.train_loss = Gauge("lorafarm_train_loss", "Latest train loss of a running job", ["tenant", "job_id"],
                                registry=r)
        self.eval_loss = Gauge("lorafarm_eval_loss", "Latest eval loss of a running job", ["tenant", "job_id"],
                               registry=r)
        self.tokens_per_s = Gauge("lorafarm_job_tokens_per_second", "Throughput of a running job", ["tenant", "job_id"],
                                  registry=r)
        self.job_step = Gauge("lorafarm_job_step", "Optimizer step of a running job", ["tenant", "job_id"], registry=r)
        self.job_total_steps = Gauge("lorafarm_job_total_steps", "Optimizer steps a running job will take",
                                     ["tenant", "job_id"], registry=r)
        # GPU only (absent on CPU): peak memory allocated on rank 0, and model FLOPs utilisation
        self.gpu_memory = Gauge("lorafarm_job_gpu_memory_bytes", "Peak GPU memory allocated by a running job's rank 0",
                                ["tenant", "job_id"], registry=r)
        self.mfu = Gauge("lorafarm_job_mfu_ratio", "Model FLOPs utilisation of a running job (0-1)", ["tenant", "job_id"],
                         registry=r)
        self.step_seconds = Histogram("lorafarm_train_step_seconds", "Optimizer step time", ["tenant"],
                                      buckets=STEP_BUCKETS, registry=r)
        self.gpu_seconds = Counter("lorafarm_gpu_seconds_total", "GPU-seconds held by running jobs (chargeback)",
                                   ["tenant"], registry=r)
        self.cpu_seconds = Counter("lorafarm_cpu_seconds_total", "CPU-seconds held by running jobs (chargeback)",
                                   ["tenant"], registry=r)
        self.adapter_bytes = Counter("lorafarm_adapter_bytes_total", "Bytes of adapters published", ["tenant"],
                                     registry=r)
        self.worker_failures = Counter("lorafarm_worker_failures_total", "Worker/runner failures", ["tenant"],
                                       registry=r)
        self.preemptions = Counter("lorafarm_preemptions_total", "Running jobs preempted (checkpointed and re-queued)",
                                   ["tenant"], registry=r)
        self.resizes = Counter("lorafarm_resizes_total", "Elastic jobs restarted on another worker count (node "
                               "lost, or grown back)", ["tenant"], registry=r)
        self.node_losses = Counter("lorafarm_node_losses_total", "Runs that lost a node they had workers on",
                                   ["tenant"], registry=r)
        self.checkpoint_seconds = Histogram("lorafarm_checkpoint_seconds", "Time to save one checkpoint", ["tenant"],
                                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.checkpoint_bytes = Counter("lorafarm_checkpoint_bytes_total", "Bytes of checkpoints written", ["tenant"],
                                        registry=r)
        self.oldest_queued = Gauge("lorafarm_queue_oldest_seconds", "Age of a tenant's oldest queued job",
                                   ["tenant"], registry=r)
        self.usage = Gauge("lorafarm_tenant_usage", "Resources held by a tenant's running jobs",
                           ["tenant", "resource"], registry=r)
        self.quota = Gauge("lorafarm_tenant_quota", "A tenant's quota", ["tenant", "resource"], registry=r)
        self.decisions = Counter("lorafarm_scheduler_decisions_total", "Admission decisions made", registry=r)
        self.decision_seconds = Histogram("lorafarm_scheduler_decision_seconds", "Time of one admission decision",
                                          buckets=(1e-5, 1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1), registry=r)
        # estimated ÷ measured training time of each ended run (1 = exact; lorafarm.estimate)
        self.estimate_error = Histogram("lorafarm_estimate_error_ratio", "Estimated / actual training time of a run",
                                        buckets=ESTIMATE_RATIO_BUCKETS, registry=r)
        self.up.set(1)
        self._job_series: dict[str, str] = {}  # job -> tenant, for removal
        self._tenant_children: dict[tuple[int, str], Any] = {}  # (metric, tenant) -> its labelled child
        self._per_job = (self.train_loss, self.eval_loss, self.tokens_per_s, self.job_step, self.job_total_steps,
                         self.gpu_memory, self.mfu)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def step(self, tenant: str, job: str, event: Mapping[str, Any], tokens_delta: float) -> None:
        """One optimizer step: ``event`` holds the step's set fields (:meth:`lorafarm.events.Step.record`)."""
        self._job_series[job] = tenant
        self.train_loss.labels(tenant, job).set(event["loss"])
        self.job_step.labels(tenant, job).set(event["step"])
        if "total_steps" in event:
            self.job_total_steps.labels(tenant, job).set(event["total_steps"])
        self.tokens_per_s.labels(tenant, job).set(event.get("tokens_per_s", 0.0))
        if "eval_loss" in event:
            self.eval_loss.labels(tenant, job).set(event["eval_loss"])
        if "gpu_memory_bytes" in event:
            self.gpu_memory.labels(tenant, job).set(event["gpu_memory_bytes"])
        if "mfu" in event:
            self.mfu.labels(tenant, job).set(event["mfu"])
        if tokens_delta > 0:
            self.tokens.labels(tenant).inc(tokens_delta)
        if "step_time_s" in event:
            self.step_seconds.labels(tenant).observe(event["step_time_s"])

    def job_ended(self, tenant: str, job: str, outcome: str, duration_s: float | None, adapter_bytes: int) -> None:
        self.finished.labels(tenant, outcome).inc()
        if duration_s is not None:
            self.duration.labels(tenant, outcome).observe(duration_s)
        if adapter_bytes:
            self.adapter_bytes.labels(tenant).inc(adapter_bytes)
        if outcome == "failed":
            self.worker_failures.labels(tenant).inc()
        self.drop_job(job)

    def for_tenant(self, metric, tenant: str):
        """``metric.labels(tenant)``, looked up once: per-tenant series live as long as the
        scheduler (a burst of thousands of starts observes each tenant's wait many times)."""
        key = (id(metric), tenant)
        child = self._tenant_children.get(key)
        if child is None:
            child = self._tenant_children[key] = metric.labels(tenant)
        return child

    def drop_job(self, job: str) -> None:
        tenant = self._job_series.pop(job, None)
        if tenant is None:
            return
        for gauge in self._per_job:
            try:
                gauge.remove(tenant, job)
            except KeyError:
                pass

    def set_job_counts(self, counts: dict[tuple[str, str], int], tenants: set[str]) -> None:
        for tenant in tenants:
            for state in STATES:
                self.jobs.labels(tenant, state).set(counts.get((tenant, state), 0))
