"""The job spec schema: every field, its type, default and meaning, in one place.

Field paths (``training.max_steps``) are public: docs, ``--set`` and error messages use them.
Cross-field rules live in :mod:`lorafarm.spec.checks` so that they can run even when an
unrelated field is invalid (every problem is reported at once).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
NAME_RULE = "1-40 characters of lowercase letters, digits and '-', not starting with '-'"


# Upper bounds that no sensible job reaches, so that no accepted value can break every job
# (a seed torch cannot take, a run of 10^30 steps); numbers are finite everywhere (no inf/nan).
MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1
OWN_WORDING = "lorafarm"  # a validator's error already worded `what is wrong — how to fix`


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DatasetSpec(_Section):
    uri: str = Field(
        min_length=1,
        description="Training data: a path, file:// or s3:// URI of one .jsonl/.json/.parquet file, "
        "a directory of them, or a glob.",
    )
    format: Literal["text", "prompt_completion", "chat"] = Field(
        "text",
        description="text: loss on every token; prompt_completion: loss on the completion only; "
        "chat: a list of {role, content} messages, loss on assistant turns only.",
    )
    text_column: str = Field("text", min_length=1, description="Column holding the text (format text).")
    prompt_column: str = Field("prompt", min_length=1, description="Prompt column (prompt_completion).")
    completion_column: str = Field(
        "completion", min_length=1, description="Completion column (prompt_completion)."
    )
    messages_column: str = Field("messages", min_length=1, description="Messages column (chat).")
    eval_fraction: float = Field(
        0.0, ge=0.0, le=0.5, description="Seeded fraction of the data held out for eval loss (0 = none)."
    )
    eval_uri: str | None = Field(None, min_length=1, description="Separate eval data (same rules as uri).")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad row (file, row, problem); skip: drop and count."
    )
    max_row_bytes: int = Field(
        8 << 20, ge=1, le=1 << 40,
        description="Largest row read, in bytes (a JSONL line, a JSON array element, or a Parquet row's text "
        "cells; default 8 MiB = 8388608): a longer one is a bad row naming its file and line, found while "
        "reading without holding it in memory.",
    )


class LoraSpec(_Section):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description='Module names to adapt (suffix match, as PEFT; at least one), or "all-linear".',
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: list[str] | str) -> list[str] | str:
        if value == []:  # PEFT would fail at run time, with 0 parameters to train
            raise PydanticCustomError(OWN_WORDING, "is empty, so nothing would train — use at least one module, "
                                      "e.g. [q_proj, v_proj], or all-linear")
        return value


class TrainingSpec(_Section):
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Optimizer steps to run (or set epochs).")
    epochs: float | None = Field(
        None, gt=0, le=10_000, description="Passes over the data (default 1 when max_steps unset)."
    )
    global_batch_size: int = Field(
        8, ge=1, le=1_048_576, description="Sequences per optimizer step, whatever the worker count."
    )
    micro_batch_size: int = Field(2, ge=1, le=65_536, description="Sequences per forward pass on one worker.")
    seq_len: int = Field(512, ge=8, le=1_048_576, description="Maximum tokens per sequence (longer ones are truncated).")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule floor as a fraction of the peak.")
    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="Linear warm-up steps before the cosine decay (one fewer than the run's "
        "steps at most: a longer warm-up is capped, with a notice)."
    )
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW (decoupled) weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0 = off).")
    packing: bool = Field(False, description="Pack several examples per row (attention never crosses them).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds data order, LoRA init and dropout.")
    eval_every_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="Eval loss every N steps (0 = only at the end; an interval longer "
        "than the run is capped, with a notice)."
    )
    checkpoint_every_steps: int = Field(
        50, ge=0, le=MAX_STEPS, description="Save a resumable checkpoint (LoRA weights, optimizer, data cursor, RNG) to "
        "<store>/<tenant>/<job-id>/checkpoints/step-N/ every N steps (0 = only when preempted).",
    )
    keep_last: int = Field(2, ge=1, le=1000, description="Checkpoints kept per job; older ones are pruned.")
    max_failures: int = Field(
        2, ge=-1, le=100, description="Worker failures survived by resuming from the latest checkpoint (-1 = no limit)."
    )
    on_nonfinite_loss: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss: stop the job with the step named (nothing is published), or skip "
        "that step's update and go on.",
    )
    co_train: Literal["auto", "never"] = Field(
        "auto", description="auto: the scheduler may train this job in a pack with compatible jobs of tenants "
        "that allow co-training (one shared frozen base; the adapter is the one it would get alone); never: "
        "always alone.",
    )


class ZeroSpec(_Section):
    stage: Literal["auto", 0, 1, 2, 3] = Field(
        "auto", description="DeepSpeed ZeRO stage. auto: 0 on one worker (nothing to partition), 2 on more; "
        "3 also partitions the frozen base (only worth it when it does not fit).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16 on GPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class ResourcesSpec(_Section):
    workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (one DeepSpeed rank each).")
    gpus_per_worker: float = Field(0, ge=0, le=16, description="GPUs per worker; 0 trains on CPU.")
    cpus_per_worker: float = Field(1, gt=0, le=1024, description="Logical CPUs reserved per worker.")
    min_workers: int | None = Field(
        None, ge=1, le=4096, description="Elastic jobs: the fewest workers the job may shrink to when a node is "
        "lost (default: workers, i.e. rigid); it grows back to workers when capacity returns.",
    )
    placement: Literal["pack", "spread"] = Field(
        "pack", description="pack: fewest nodes (the all-reduce stays inside a node where it can); spread: one "
        "worker per node where possible.",
    )
    accelerator_type: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run only on nodes with this accelerator (Ray's accelerator_type resource, e.g. H100).",
    )

    @property
    def least_workers(self) -> int:
        """The smallest size the job may run at (``min_workers``, else ``workers``)."""
        return self.min_workers if self.min_workers is not None else self.workers


class JobSpec(_Section):
    """One LoRA fine-tuning job."""

    tenant: str = Field(pattern=NAME_PATTERN, description=f"Tenant name: {NAME_RULE}.")
    name: str = Field(pattern=NAME_PATTERN, description=f"Job name: {NAME_RULE}.")
    base_model: str = Field(
        "tiny-llama",
        min_length=1,
        description="Built-in name (tiny-llama), local or s3:// Hugging Face directory, or a hub id "
        "already in the local cache (nothing is downloaded at run time).",
    )
    priority: str | None = Field(
        None, pattern=NAME_PATTERN, description="Priority class from the tenants file (default: its default class)."
    )
    trust_remote_code: bool = Field(
        False, description="Let transformers run the base model's own code; refused by the scheduler unless the "
        "tenants file allows it for this tenant.",
    )
    dataset: DatasetSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    zero: ZeroSpec = Field(default_factory=ZeroSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    # Derived values the worker needs; they follow from the fields above.
    def grad_accum_steps(self, workers: int | None = None) -> int:
        w = workers or self.resources.workers
        return self.training.global_batch_size // (self.training.micro_batch_size * w)

    def resolved_stage(self, workers: int | None = None) -> int:
        """The ZeRO stage a run on ``workers`` uses (``zero.stage: auto`` decided)."""
        if self.zero.stage != "auto":
            return self.zero.stage
        return 0 if (workers or self.resources.workers) == 1 else 2

    def resolved_precision(self) -> str:
        if self.zero.precision != "auto":
            return self.zero.precision
        return "bf16" if self.resources.gpus_per_worker > 0 else "fp32"


SECTIONS: dict[str, type[_Section]] = {
    "dataset": DatasetSpec,
    "lora": LoraSpec,
    "training": TrainingSpec,
    "zero": ZeroSpec,
    "resources": ResourcesSpec,
}
