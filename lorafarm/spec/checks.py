"""Cross-field rules. Each rule runs when the sections it reads are valid on their own,
so a bad ``lora.r`` does not hide a batch size that does not divide."""

from __future__ import annotations

from collections.abc import Callable

from .model import DatasetSpec, LoraSpec, ResourcesSpec, TrainingSpec, ZeroSpec

Problem = str


def _batch_divides(t: TrainingSpec, r: ResourcesSpec) -> list[Problem]:
    per_step = t.micro_batch_size * r.workers
    if t.global_batch_size % per_step == 0:
        return []
    lower = max(per_step, t.global_batch_size // per_step * per_step)
    return [
        f"training.global_batch_size: {t.global_batch_size} is not divisible by training.micro_batch_size × "
        f"resources.workers = {t.micro_batch_size} × {r.workers} = {per_step} — set global_batch_size to a "
        f"multiple of {per_step} (e.g. {lower} or {lower + per_step}), or change micro_batch_size or workers"
    ]


def _elastic_range(t: TrainingSpec, r: ResourcesSpec) -> list[Problem]:
    if r.min_workers is None:
        return []
    if r.min_workers > r.workers:
        return [f"resources.min_workers: {r.min_workers} is more than resources.workers ({r.workers}) — set "
                f"min_workers between 1 and {r.workers}, or remove it for a rigid job"]
    per_step = t.micro_batch_size * r.min_workers
    if t.global_batch_size % per_step:
        return [f"resources.min_workers: training.global_batch_size {t.global_batch_size} is not divisible by "
                f"training.micro_batch_size × min_workers = {per_step}, so the job could not keep its global batch "
                f"at that size — choose a min_workers that divides it"]
    return []


def _steps_or_epochs(t: TrainingSpec) -> list[Problem]:
    # warm-up, eval and checkpoint intervals longer than the run are capped, not refused
    # (:func:`lorafarm.spec.steps.cap_intervals`, applied by the preflight)
    if t.max_steps is not None and t.epochs is not None:
        return ["training.epochs: both max_steps and epochs are set — keep exactly one of them"]
    return []


def _targets(lora: LoraSpec) -> list[Problem]:
    targets = lora.target_modules  # an empty list is refused by the schema
    if isinstance(targets, list):
        return [f"lora.target_modules[{i}]: {name!r} is not a module name — write a name such as q_proj, or remove it"
                for i, name in enumerate(targets) if not name.strip() or name != name.strip()]
    return []


def _precision_device(z: ZeroSpec, r: ResourcesSpec) -> list[Problem]:
    if z.precision in ("bf16", "fp16") and r.gpus_per_worker == 0:
        return [
            f"zero.precision: {z.precision} needs GPUs but resources.gpus_per_worker is 0 — use "
            "precision fp32 or auto on CPU, or give each worker a GPU"
        ]
    return []


def _eval_source(d: DatasetSpec) -> list[Problem]:
    if d.eval_uri and d.eval_fraction > 0:
        return [
            "dataset.eval_fraction: set together with dataset.eval_uri — use one eval source: "
            "remove eval_fraction or eval_uri"
        ]
    return []


# (sections read, rule)
RULES: list[tuple[tuple[str, ...], Callable[..., list[Problem]]]] = [
    (("training", "resources"), _batch_divides),
    (("training", "resources"), _elastic_range),
    (("training",), _steps_or_epochs),
    (("lora",), _targets),
    (("zero", "resources"), _precision_device),
    (("dataset",), _eval_source),
]
