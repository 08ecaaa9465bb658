"""The adapter's manifest (``lorafarm.json``): what was trained, from what, how, with which versions.

Written last when an adapter is published (:func:`lorafarm.storage.publish_dir` adds each
file's size and sha256), so a manifest vouches for a complete adapter.
"""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..spec import JobSpec, spec_digest

FORMAT = "lorafarm.adapter/v1"


def adapter_manifest(
    spec: JobSpec,
    *,
    job_id: str,
    base_weights_digest: str,
    dataset_fingerprint: str,
    data_stats: dict[str, Any],
    metrics: dict[str, Any],
    world_size: int,
    precision: str,
    grad_accum_steps: int,
) -> dict[str, Any]:
    """The manifest's fields, less ``files``; ``metrics`` are the run's (steps, losses, sizes, times)."""
    return {
        "format": FORMAT,
        "job_id": job_id,
        "tenant": spec.tenant,
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "spec_digest": spec_digest(spec),
        "base_model": spec.base_model,
        "base_weights_digest": base_weights_digest,
        "dataset_fingerprint": dataset_fingerprint,
        "data": data_stats,
        "chat": spec.dataset.format == "chat",
        "metrics": metrics,
        "world_size": world_size,
        "zero_stage": spec.resolved_stage(world_size),
        "precision": precision,
        "grad_accum_steps": grad_accum_steps,
        "versions": _versions(),
        "created_at": time.time(),
    }


def _versions() -> dict[str, str]:
    import deepspeed
    import peft
    import ray
    import torch
    import transformers

    return {
        "lorafarm": __version__,
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__,
    }
