"""A seeded synthetic workload, so tests and benchmarks need no trace download.

Shaped after what the Philly, Helios and PAI analyses report for shared GPU clusters:

* **heavy-tailed durations**: log-normal (median 20 min, sigma 1.6), clipped to [1 min, 4 days],
  so most jobs are short and a few run for days;
* **bursty arrivals**: jobs come in bursts (a hyper-parameter sweep submits many at once; burst
  sizes are geometric, mean 4) whose start times follow a daily cycle (busy day, quiet night);
* **skewed tenants**: tenant ``t00`` submits the most, by a Zipf law (s = 1.1) over tenants;
* **gangs of 1-64 GPUs**: 1, 2, 4, 8, 16, 32, 64 GPUs; up to 8 GPUs is one worker, more is
  8-GPU workers (so a 64-GPU gang is 8 workers that must all start together).

The arrival span is chosen so the offered work is ``load`` × the cluster's GPU capacity.
Same arguments, same jobs, byte for byte.

**Shapes and step times** (drawn from a second seeded stream, so the durations, sizes and
arrivals above are the same with or without them): every job gets a spec-like shape, one of
:data:`CONFIGS` (base model, sequence length, micro batch, LoRA rank and targets, packing) on
its gang, and a step count. The shape's true step time is its FLOPs figure (what the estimator's
prior computes, ``prior_step_s``) times a hidden per-shape factor, log-normal with sigma 0.35
(what FLOPs miss: kernels, communication, memory); each job's own step time is the shape's times
a per-job log-normal factor with sigma 0.12 (node, data and load variance). The job's steps
are its duration ÷ its own step time, so ``duration`` = steps × step time and no estimate
(which sees steps, shape and past jobs only) equals the truth.
"""

from __future__ import annotations

import math
import random

from .trace import SimJob

GANG_GPUS = (1, 2, 4, 8, 16, 32, 64)
GANG_WEIGHTS = (0.40, 0.16, 0.14, 0.13, 0.08, 0.05, 0.04)
DAY = 86400.0


# (base model, params, seq_len, micro batch, LoRA rank, targets, packing): a mix of what tenants fine-tune
CONFIGS = (
    ("llama-3.2-1b", 1.2e9, 1024, 8, 16, "q,v", False),
    ("llama-3.2-1b", 1.2e9, 2048, 4, 8, "all-linear", True),
    ("llama-3.2-3b", 3.2e9, 1024, 4, 16, "q,v", False),
    ("llama-3.2-3b", 3.2e9, 4096, 2, 32, "all-linear", True),
    ("llama-3.1-8b", 8.0e9, 2048, 2, 16, "all-linear", True),
    ("llama-3.1-8b", 8.0e9, 1024, 4, 8, "q,k,v,o", False),
    ("llama-3.1-8b", 8.0e9, 8192, 1, 64, "all-linear", True),
    ("qwen2.5-14b", 14.7e9, 2048, 2, 16, "all-linear", True),
    ("qwen2.5-32b", 32.5e9, 2048, 1, 16, "all-linear", True),
    ("llama-3.1-70b", 70.6e9, 2048, 1, 16, "all-linear", True),
)
CONFIG_WEIGHTS = (0.18, 0.12, 0.14, 0.08, 0.16, 0.10, 0.05, 0.08, 0.05, 0.04)
SHAPE_SIGMA = 0.35  # true per-shape speed vs the FLOPs prior
JOB_SIGMA = 0.12  # a job's step time vs its shape's


def tenant_names(n: int) -> list[str]:
    return [f"t{i:02d}" for i in range(n)]


def generate(n: int, seed: int = 0, gpus: float = 1000, tenants: int = 50, load: float = 0.9,
             gpus_per_node: int = 8, median_s: float = 1200.0, sigma: float = 1.6,
             max_gang: int = 64) -> list[SimJob]:
    """``n`` jobs from ``tenants`` tenants offering ``load`` × ``gpus`` of work on average."""
    if n < 1 or gpus <= 0 or tenants < 1 or load <= 0:
        raise ValueError("generate needs n >= 1, gpus > 0, tenants >= 1, load > 0")
    rng = random.Random(seed)
    names = tenant_names(tenants)
    zipf = [1.0 / (i + 1) ** 1.1 for i in range(tenants)]
    sizes = [g for g in GANG_GPUS if g <= min(max_gang, gpus)]
    weights = GANG_WEIGHTS[:len(sizes)]
    mu = math.log(median_s)

    shapes = []
    work = 0.0
    for _ in range(n):
        g = rng.choices(sizes, weights)[0]
        duration = float(round(min(4 * DAY, max(60.0, rng.lognormvariate(mu, sigma)))))
        shapes.append((g, duration))
        work += g * duration
    span = work / (load * gpus)

    # bursts: (start, tenant, size); starts thinned by a daily cycle (peak 2x the trough)
    jobs: list[SimJob] = []
    i = 0
    while i < n:
        size = min(n - i, 1 + int(math.log(1.0 - rng.random()) / math.log(0.75)))
        tenant = names[rng.choices(range(tenants), zipf)[0]]
        while True:
            t = rng.random() * span
            if rng.random() < (1.0 + 0.5 * math.sin(2 * math.pi * t / DAY)) / 1.5:
                break
        for k in range(size):
            g, duration = shapes[i]
            workers, per = (1, g) if g <= gpus_per_node else (g // gpus_per_node, gpus_per_node)
            jobs.append(SimJob(job_id=f"j{i:06d}", tenant=tenant, submit_time=round(t + 5.0 * k, 3),
                               workers=workers, gpus_per_worker=float(per), duration=duration))
            i += 1
    jobs.sort(key=lambda j: (j.submit_time, j.job_id))
    t0 = jobs[0].submit_time
    shaped = _shapes(jobs, seed)
    return [SimJob(j.job_id, j.tenant, round(j.submit_time - t0, 3), j.workers, j.gpus_per_worker, j.duration,
                   shape=shape, steps=steps, prior_step_s=prior)
            for j, (shape, steps, prior) in zip(jobs, shaped, strict=True)]


def _shapes(jobs: list[SimJob], seed: int) -> list[tuple[str, int, float]]:
    """(shape key, steps, prior step time) per job, from their own stream (module docstring)."""
    from ..estimate.prior import flops_prior_step_s
    from ..estimate.shape import Shape, digest

    rng = random.Random(f"shapes-{seed}")
    hidden: dict[str, float] = {}
    out = []
    for j in jobs:
        base, params, seq, mb, r, targets, packing = CONFIGS[rng.choices(range(len(CONFIGS)), CONFIG_WEIGHTS)[0]]
        gpus = max(1, int(j.gpus))
        shape = Shape(digest(base), "A100", j.workers, mb, seq, r, targets, packing, global_batch=mb * gpus * 4)
        key = shape.key
        prior = flops_prior_step_s(int(params), shape.global_batch, seq, j.workers, j.gpus_per_worker,
                                   packing=packing, accelerator="A100")
        if key not in hidden:
            hidden[key] = rng.lognormvariate(0.0, SHAPE_SIGMA)
        step_s = prior * hidden[key] * rng.lognormvariate(0.0, JOB_SIGMA)
        out.append((key, max(1, round(j.duration / step_s)), round(prior, 6)))
    return out


def tenants_yaml(tenants: int = 50, gpus: float = 1000, quota_fraction: float = 0.5,
                 heavy_weight: int = 5) -> str:
    """A tenants file for :func:`generate`'s tenants: every tenant may hold ``quota_fraction``
    of the GPUs; the first ``heavy_weight`` tenants have weight 2 (the rest 1)."""
    quota = max(64, int(gpus * quota_fraction))
    lines = ["# generated by lorafarm.sim.generate.tenants_yaml", "policy: {aging_per_hour: 100, backfill: true}",
             "tenants:", f"  default: {{weight: 1, quota: {{gpus: {quota}}}}}"]
    for i, name in enumerate(tenant_names(tenants)):
        lines.append(f"  {name}: {{weight: {2 if i < heavy_weight else 1}, quota: {{gpus: {quota}}}}}")
    return "\n".join(lines) + "\n"
