"""A job's *shape*: what decides how long one optimizer step takes. Two jobs of one shape take
the same time per step up to noise (data, node), so step times learned from one predict the
other. A job's length is then its planned steps × its shape's step time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Shape:
    base_digest: str  # sha256 (first 16 hex) of the base model reference
    accelerator: str  # "cpu", or the GPU type ("gpu" when unknown)
    workers: int
    micro_batch: int
    seq_len: int
    lora_r: int
    targets: str  # sorted target modules joined by ",", or "all-linear"
    packing: bool
    global_batch: int = 0  # sequences per optimizer step (0 = micro_batch × workers)
    grad_checkpointing: bool = False

    @property
    def key(self) -> str:
        """A stable string (a JSON key in ``estimates.json``)."""
        return (f"{self.base_digest}|{self.accelerator}|w{self.workers}|mb{self.micro_batch}|gb{self.global_batch}"
                f"|seq{self.seq_len}|r{self.lora_r}|{self.targets}|pack{int(self.packing)}"
                f"|gc{int(self.grad_checkpointing)}")


def digest(base_model: str) -> str:
    return hashlib.sha256(base_model.encode()).hexdigest()[:16]


def _get(d: dict[str, Any], section: str, name: str, default: Any) -> Any:
    value = (d.get(section) or {}).get(name, default)
    return default if value is None else value


def shape_of(spec: Any, accelerator: str | None = None) -> Shape:
    """The shape of a job spec (a :class:`~lorafarm.spec.JobSpec` or its JSON dict).
    ``accelerator``: the GPU type the job's workers get (``None``: ``gpu``, or ``cpu`` for
    ``gpus_per_worker: 0``)."""
    d = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    gpus = float(_get(d, "resources", "gpus_per_worker", 0) or 0)
    targets = _get(d, "lora", "target_modules", "all-linear")
    return Shape(
        base_digest=digest(str(d.get("base_model") or "tiny-llama")),
        accelerator="cpu" if gpus <= 0 else (accelerator or "gpu"),
        workers=int(_get(d, "resources", "workers", 1)),
        micro_batch=int(_get(d, "training", "micro_batch_size", 2)),
        seq_len=int(_get(d, "training", "seq_len", 512)),
        lora_r=int(_get(d, "lora", "r", 8)),
        targets=targets if isinstance(targets, str) else ",".join(sorted(targets)),
        packing=bool(_get(d, "training", "packing", False)),
        global_batch=int(_get(d, "training", "global_batch_size", 0) or 0),
        grad_checkpointing=bool(_get(d, "zero", "gradient_checkpointing", False)),
    )


def planned_steps(spec: Any) -> int | None:
    """Optimizer steps the job will run when the spec says (``training.max_steps``); None when it
    trains for epochs over rows not counted yet (the estimator then uses what runs reported)."""
    d = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    steps = (d.get("training") or {}).get("max_steps")
    return int(steps) if steps else None


def epochs_key(spec: Any) -> str:
    """What fixes an epochs-based job's step count: its data, global batch and epochs."""
    d = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    t = d.get("training") or {}
    return f"{(d.get('dataset') or {}).get('uri')}|gb{t.get('global_batch_size')}|ep{t.get('epochs') or 1}"
