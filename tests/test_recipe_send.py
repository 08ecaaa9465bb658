"""Which rank's events reach the job's driver: every rank's own failure, only rank 0's others."""

from __future__ import annotations

import queue
from types import SimpleNamespace

from lorafarm.events import Step, WorkerError
from lorafarm.worker.recipe import LoraRecipe


def sent(rank: int, *events) -> list:
    q: queue.Queue = queue.Queue()
    recipe = LoraRecipe(SimpleNamespace(spec=None, progress=q), rank=rank, world=2)
    for e in events:
        recipe.send(e)
    return [q.get_nowait() for _ in range(q.qsize())]


def test_a_non_zero_rank_reports_its_own_failure_named_by_rank_and_nothing_else():
    step = Step(step=1, total_steps=2, loss=1.0, lr=0.1, tokens_per_s=1.0, step_time_s=0.1, tokens_seen=8)
    assert sent(1, step, WorkerError(reason="DataError: bad row", retryable=False)) == [
        WorkerError(reason="rank 1: DataError: bad row", retryable=False)]
    assert sent(0, step, WorkerError(reason="x")) == [step, WorkerError(reason="x")]
