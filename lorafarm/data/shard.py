"""Deterministic sharding: a seeded order per epoch; global batch k holds the same rows
whatever the worker count, and each worker takes a contiguous slice of it."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..spec.steps import steps_per_epoch  # one definition: the preflight and the recipe count alike

__all__ = ["epoch_order", "global_batch", "micro_batches", "steps_per_epoch", "worker_slice"]


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(num_rows)


def global_batch(k: int, num_rows: int, global_batch_size: int, seed: int) -> np.ndarray:
    """Row indices of optimizer step ``k`` (counting across epochs; partial batches dropped)."""
    per_epoch = steps_per_epoch(num_rows, global_batch_size)
    if per_epoch == 0:
        raise DataError(f"only {num_rows} training rows for a global batch of {global_batch_size} — lower "
                        "training.global_batch_size or add data")
    epoch, i = divmod(k, per_epoch)
    return epoch_order(num_rows, seed, epoch)[i * global_batch_size : (i + 1) * global_batch_size]


def worker_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    size = len(batch) // world
    return batch[rank * size : (rank + 1) * size]


def micro_batches(indices: np.ndarray, micro_batch_size: int) -> list[np.ndarray]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
