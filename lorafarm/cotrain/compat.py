"""Which jobs may train as one pack: the pure rule the policy and the pack recipe share.

A pack runs one frozen base, one attention/collate path and one DeepSpeed engine, so its
members must agree on what those depend on — the base weights, precision, ZeRO stage, worker
count, gradient checkpointing, packing and the sequence-length bucket — and on nothing else:
LoRA rank, alpha, dropout, target modules, learning rate, schedule, steps, global and micro
batch, seed and data are each member's own. ZeRO-3 is not packed (yet): its gathers of the
members' factors inside the routing hooks are untested.
"""

from __future__ import annotations

import json

from ..spec import JobSpec

PACK_FAILED = "the pack failed: "  # how a failure of the whole pack (not of one member's own) begins


def seq_bucket(seq_len: int) -> int:
    """The power of two at or above ``seq_len``: jobs of one bucket pad alike."""
    return 1 << max(0, seq_len - 1).bit_length()


def pack_key(spec: JobSpec) -> tuple:
    """Jobs with equal keys may share a pack (their tenants' trust and quotas aside)."""
    return (spec.base_model, spec.resolved_precision(), spec.resolved_stage(), spec.resources.workers,
            spec.resources.gpus_per_worker, spec.zero.gradient_checkpointing, spec.training.packing,
            seq_bucket(spec.training.seq_len), spec.trust_remote_code)


KEY_FIELDS = ("base_model", "zero.precision", "zero.stage", "resources.workers", "resources.gpus_per_worker",
              "zero.gradient_checkpointing", "training.packing", "training.seq_len (its power-of-two bucket)",
              "trust_remote_code")


def pack_problems(specs: list[JobSpec]) -> list[str]:
    """Why ``specs`` cannot train as one pack, every reason at once ([] = they can)."""
    problems = []
    if len(specs) < 1:
        return ["a pack needs at least one job"]
    for s in specs:
        if s.training.co_train == "never":
            problems.append(f"{s.tenant}/{s.name}: training.co_train is never")
        if s.resolved_stage() == 3:
            problems.append(f"{s.tenant}/{s.name}: ZeRO-3 jobs are not co-trained (zero.stage 3)")
        if s.lora.use_dora:
            problems.append(f"{s.tenant}/{s.name}: DoRA adapters are not co-trained (lora.use_dora)")
    keys = [pack_key(s) for s in specs]
    for s, k in zip(specs[1:], keys[1:], strict=True):
        for field, a, b in zip(KEY_FIELDS, keys[0], k, strict=True):
            if a != b:
                problems.append(f"{s.tenant}/{s.name}: {field} is {b!r}, the pack's is {a!r}")
    return problems


def scheduler_pack_key(spec: JobSpec) -> str | None:
    """The policy's ``JobRequest.pack_key`` for ``spec``: equal strings may share a pack; None
    when the job is never co-trained (``training.co_train: never``, ZeRO-3, DoRA). Whether its
    tenant co-trains is the policy's to check (the tenants file may change while it waits)."""
    if pack_problems([spec]):
        return None
    return json.dumps(pack_key(spec), separators=(",", ":"))
