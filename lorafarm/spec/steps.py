"""How many optimizer steps a job takes, and intervals capped to that length: the one place
``lorafarm validate``'s preflight and the training recipe both compute them.

A run of ``total_steps`` steps cannot warm up for longer than it runs, nor evaluate or
checkpoint less often than once: such intervals are capped (with a notice naming the field)
rather than refused, so ``--set training.max_steps=4`` on any spec runs. Pure: no torch, no Ray.
"""

from __future__ import annotations

import math

from .model import JobSpec, TrainingSpec


def steps_per_epoch(num_rows: float, global_batch_size: int) -> int:
    """Full global batches in one pass over ``num_rows`` training rows (a partial batch is dropped)."""
    return int(num_rows // global_batch_size)


def total_steps(training: TrainingSpec, per_epoch: int) -> int:
    """``training.max_steps``, else ``epochs`` (default 1) passes of ``per_epoch`` steps, at least one."""
    if training.max_steps is not None:
        return training.max_steps
    return max(1, math.ceil((training.epochs or 1.0) * per_epoch))


def cap_intervals(spec: JobSpec, steps: int) -> tuple[JobSpec, list[str]]:
    """``spec`` with every interval longer than a run of ``steps`` steps capped, and one notice
    per cap (``field: what — what now``). Unchanged when nothing needs a cap.

    - ``training.warmup_steps`` ≥ ``steps`` → ``steps - 1`` (the last step at least decays);
    - ``training.eval_every_steps`` > ``steps`` → ``steps`` (eval at the end only, as 0 does);
    - ``training.checkpoint_every_steps`` > ``steps`` → ``steps`` (no checkpoint before the end,
      as before) when the spec sets it; its default (50) outlasts many runs and is left alone.
    """
    t = spec.training
    updates: dict[str, int] = {}
    notices: list[str] = []
    if t.warmup_steps and t.warmup_steps >= steps:
        updates["warmup_steps"] = steps - 1
        notices.append(f"training.warmup_steps: {t.warmup_steps} is not below the run's {steps} steps — "
                       f"capped at {steps - 1}")
    if t.eval_every_steps > steps:
        updates["eval_every_steps"] = steps
        notices.append(f"training.eval_every_steps: {t.eval_every_steps} is longer than the run's {steps} steps — "
                       f"capped at {steps} (eval at the end only)")
    if t.checkpoint_every_steps > steps and "checkpoint_every_steps" in t.model_fields_set:
        updates["checkpoint_every_steps"] = steps
        notices.append(f"training.checkpoint_every_steps: {t.checkpoint_every_steps} is longer than the run's "
                       f"{steps} steps — capped at {steps} (no checkpoint before the end)")
    if not updates:
        return spec, []
    return spec.model_copy(update={"training": t.model_copy(update=updates)}), notices
