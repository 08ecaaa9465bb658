"""Run in subprocesses by test_checkpoint.py: one training rank per process over gloo, the
real recipe (DeepSpeed ZeRO, checkpoints in a store), without Ray. Argument: a JSON file with
rank, world, port, the worker config fields, ``stop_after`` (steps after which rank 0 asks
to stop, as a preempting scheduler would; 0 = run to the end) and ``nan_at_step`` (a step whose
loss is made NaN). Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    rank, world = args["rank"], args["world"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lorafarm.spec import validate_spec
    from lorafarm.worker.recipe import LoraRecipe, WorkerConfig

    config = args["config"]
    recipe = LoraRecipe(WorkerConfig(**{**config, "spec": validate_spec(config["spec"])}), rank, world)
    stop_after = args.get("stop_after", 0)
    recipe.stop_requested = lambda: bool(stop_after) and len(recipe.history) + 1 >= stop_after
    nan_at = args.get("nan_at_step", 0)
    if nan_at:  # fault injection: every micro batch of that step yields a NaN loss
        real = recipe._token_loss_sum
        recipe._token_loss_sum = lambda inputs: real(inputs) * (float("nan") if len(recipe.history) + 1 == nan_at else 1.0)
    manifest = recipe.run()
    print(json.dumps({"rank": rank, "resumed_from": recipe.resumed_from, "preempted_at": recipe.preempted_at,
                      "published": manifest is not None, "checkpoints": recipe.checkpoints,
                      "skipped_steps": recipe.skipped_steps,
                      "losses": [h["loss"] for h in recipe.history]}))


if __name__ == "__main__":
    main()
