"""Run by test_data_stream.py in a subprocess: the real recipe on one rank over gloo (no Ray),
its rows read through a bounded row cache (``LORAFARM_ROW_CACHE_BYTES``). Argument: a JSON
file with rank, world, port and the worker config fields. Prints one JSON line: the losses and
the row cache's peak."""

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
    recipe.stop_requested = lambda: False
    manifest = recipe.run()
    rows = recipe.train_rows
    print(json.dumps({"published": manifest is not None, "losses": [h["loss"] for h in recipe.history],
                      "peak_cached_bytes": rows.peak_cached_bytes, "groups_read": rows.groups_read}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
