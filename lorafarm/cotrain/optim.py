"""One optimizer for a pack: an AdamW param group per member (its own learning rate, weight
decay and schedule lambda), each group's gradients clipped by the member's own norm.

DeepSpeed's ``gradient_clipping`` is one norm over every trainable parameter — for a pack that
would let one member's large gradients shrink another's update. So the engine's clipping is off
and the optimizer clips each group itself at the start of ``step()``, which DeepSpeed calls at
every accumulation boundary under every ZeRO stage, after the gradients are reduced. Under ZeRO
1–3 the optimizer holds each rank's partition of every group, so the groups' squared norms are
summed over the data-parallel ranks (one all-reduce for all groups); under ZeRO 0 every rank
holds the whole reduced gradient and the local norm is the norm. The coefficient is
``max_norm / (norm + 1e-6)`` when below 1, as ``torch.nn.utils.clip_grad_norm_`` and
DeepSpeed's own clipping compute it.

A group whose ``active`` is False is left out of the update: weights, moments and Adam's step
count untouched, as if that member took no step — a member that has left the pack, or skips a
step after a non-finite loss (``training.on_nonfinite_loss: skip``), exactly as it would alone.
"""

from __future__ import annotations

import torch


def member_optimizer(groups: list[dict], partitioned: bool, betas=(0.9, 0.999), eps: float = 1e-8):
    """``torch.optim.AdamW`` over ``groups`` (each: ``params``, ``lr``, ``weight_decay``,
    ``max_grad_norm`` — 0 for none); ``partitioned``: ZeRO stage ≥ 1 (norms summed over ranks)."""

    class MemberAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            self.clip_per_member()
            groups = self.param_groups
            active = [g for g in groups if g.get("active", True)]
            if len(active) == len(groups):
                return super().step(closure)
            self.param_groups = active  # torch's AdamW updates the groups it iterates, nothing else
            try:
                return super().step(closure)
            finally:
                self.param_groups = groups

        def clip_per_member(self) -> list[float]:
            """Clip each group by its ``max_grad_norm``; returns the groups' norms before clipping."""
            squares = torch.stack([
                sum((p.grad.detach().float().pow(2).sum() for p in g["params"] if p.grad is not None),
                    torch.zeros(()))
                for g in self.param_groups])
            if partitioned and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(squares)
            norms = squares.sqrt()
            for g, norm in zip(self.param_groups, norms, strict=True):
                limit = g.get("max_grad_norm") or 0.0
                coef = limit / (float(norm) + 1e-6)
                if limit and coef < 1.0:
                    for p in g["params"]:
                        if p.grad is not None:
                            p.grad.mul_(coef)
            return norms.tolist()

    return MemberAdamW(groups, betas=betas, eps=eps)
