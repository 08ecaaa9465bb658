"""The typed events between workers, driver, runner and scheduler: one JSON form that loses
nothing, pickles as is, and a step record whose keys are history.jsonl's documented ones."""

from __future__ import annotations

import dataclasses
import pickle
import re

import pytest

from lorafarm import events
from lorafarm.events import (
    EVENT_TYPES,
    CheckpointSaved,
    DataReady,
    Done,
    GroupStarted,
    Phase,
    Preempted,
    Resumed,
    RunOutcome,
    RunState,
    Step,
    WorkerError,
    from_dict,
    to_dict,
)
from lorafarm.ops import history

FULL_STEP = Step(step=1, total_steps=4, loss=2.5, lr=1e-3, tokens_per_s=900.0, step_time_s=0.3, tokens_seen=256,
                 eval_loss=2.6, skipped=True, trainable_params=10, total_params=100, optimizer_state_bytes=80,
                 optimizer_numel=10, gpu_memory_bytes=2**30, mfu=0.4)

ONE_OF_EACH = [
    Phase("preparing data"),
    DataReady(stats={"examples": 3, "tokens": 90, "rows": 3}, cache_hit=True),
    GroupStarted(world_size=2, placement_group="ab12"),
    Resumed(step=4, world_size=1),
    Step(step=2, total_steps=4, loss=2.0, lr=1e-3, tokens_per_s=1.0, step_time_s=0.1, tokens_seen=512),
    FULL_STEP,
    CheckpointSaved(step=4, bytes=1234, seconds=0.5),
    WorkerError(reason="RuntimeError: boom", retryable=True),
    Preempted(step=4),
    Done(manifest={"metrics": {"steps": 4}, "files": {}}, history=({"step": 1, "loss": 2.5},)),
]


def test_every_event_class_is_covered_here():
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_TYPES.values())
    assert set(EVENT_TYPES.values()) == set(events.Event.__args__)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_json_form_and_pickle_round_trip(event):
    data = to_dict(event)
    assert data["kind"] == event.kind
    assert from_dict(data) == event
    assert pickle.loads(pickle.dumps(event)) == event


def test_from_dict_names_an_unknown_kind_or_field():
    with pytest.raises(ValueError, match="unknown event kind 'nope'"):
        from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match="unknown field"):
        from_dict({"kind": "preempted", "step": 1, "extra": 2})


def _documented_history_keys() -> list[str]:
    """The plain ````name```` words of the schema in ops.history's docstring (after "Keys:";
    dotted spec fields such as ``training.eval_every_steps`` are not keys)."""
    schema = history.__doc__.split("Keys:", 1)[1]
    return re.findall(r"``(\w+)``", schema)


def test_step_record_keys_are_the_documented_history_keys():
    assert len(_documented_history_keys()) == len(set(_documented_history_keys()))
    assert set(FULL_STEP.record()) == set(_documented_history_keys())
    assert set(FULL_STEP.record()) == {f.name for f in dataclasses.fields(Step)}
    minimal = ONE_OF_EACH[4].record()
    assert list(minimal) == ["step", "total_steps", "loss", "lr", "tokens_per_s", "step_time_s", "tokens_seen"]


def test_run_outcome_counts_the_adapters_bytes():
    outcome = RunOutcome(RunState.SUCCEEDED, adapter_uri="/a", manifest={"files": {"x": {"size": 3}, "y": {"size": 4}}})
    assert outcome.adapter_bytes == 7
    assert RunOutcome.failed("why") == RunOutcome(RunState.FAILED, reason="why")
    assert RunOutcome(RunState.PREEMPTED, step=3).adapter_bytes == 0
