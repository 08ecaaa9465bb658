"""Deterministic sharding: the same global batches on 1, 2 or 4 workers, a fresh permutation each
epoch, and a clear error when there are too few rows."""

from __future__ import annotations

import numpy as np
import pytest

from lorafarm.data import (
    epoch_order,
    global_batch,
    micro_batches,
    steps_per_epoch,
    worker_slice,
)
from lorafarm.errors import DataError


@pytest.mark.parametrize("num_rows,gbs", [(40, 8), (37, 4)])
def test_global_batches_are_the_same_for_1_2_4_workers(num_rows, gbs):
    per_epoch = steps_per_epoch(num_rows, gbs)
    assert per_epoch == num_rows // gbs
    for k in range(3 * per_epoch):
        batch = global_batch(k, num_rows, gbs, seed=11)
        assert len(batch) == gbs and len(set(batch.tolist())) == gbs
        for world in (1, 2, 4):
            slices = [worker_slice(batch, rank, world) for rank in range(world)]
            assert all(len(s) == gbs // world for s in slices)  # each worker reads only its slice
            assert np.array_equal(np.concatenate(slices), batch)  # ...and together they are the batch
            # micro batches cover exactly the worker's slice, in order
            for s in slices:
                assert np.array_equal(np.concatenate(micro_batches(s, 2)), s)
        assert np.array_equal(global_batch(k, num_rows, gbs, seed=11), batch)  # deterministic


def test_each_epoch_is_a_fresh_permutation_covering_every_row():
    num_rows, gbs, seed = 40, 8, 3
    epochs = []
    for epoch in range(3):
        seen = np.concatenate([global_batch(epoch * 5 + i, num_rows, gbs, seed) for i in range(5)])
        assert sorted(seen.tolist()) == list(range(num_rows))  # every row exactly once per epoch
        assert np.array_equal(seen, epoch_order(num_rows, seed, epoch))
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epoch_order(num_rows, seed + 1, 0), epochs[0])  # the seed matters
    assert not np.array_equal(epochs[0], np.arange(num_rows))  # shuffled at all


def test_too_few_rows_for_one_global_batch_is_a_clear_error():
    with pytest.raises(DataError, match="only 3 training rows for a global batch of 8"):
        global_batch(0, 3, 8, 0)
