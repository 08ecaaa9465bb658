"""Run in subprocesses by test_cotrain_pack.py: one training rank per process over gloo, without
Ray. Argument: a JSON file with rank, world, port, ``configs`` (worker config fields, one per
job) and ``mode``: ``solo`` trains the one job with the real recipe (LoraRecipe), ``pack`` trains
them all as one pack (PackRecipe). ``stop_after`` ({job id: steps}): rank 0's runner asks that
member to stop after so many steps (a preemption: it checkpoints and leaves). Prints one JSON line (rank 0's view).

One torch thread per rank, as a ``cpus_per_worker: 1`` Ray worker runs (Ray sets
``OMP_NUM_THREADS`` to the worker's CPUs): with more threads, CPU GEMMs split their reductions
by the batch's row count, so the same row's gradients round differently in a 1-row micro batch
and in a 3-row pack pass (~1.5e-6, measured; 0.0 with one thread) and Adam's near-sign early
updates grow that to ~5e-5 in the adapter — the same rounding any change of batch shape gives
a job alone, not a difference in what is computed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist


class StopAfter:
    """An in-process runner that asks to stop once the member took ``n`` steps."""

    def __init__(self, recipe_member, n: int):
        self.member, self.n = recipe_member, n

    def stop_requested(self) -> bool:
        return self.member.done + 1 >= self.n


def main() -> None:
    import torch

    torch.set_num_threads(1)
    args = json.loads(Path(sys.argv[1]).read_text())
    rank, world = args["rank"], args["world"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lorafarm.spec import validate_spec
    from lorafarm.worker.recipe import LoraRecipe, WorkerConfig

    configs = [WorkerConfig(**{**c, "spec": validate_spec(c["spec"])}) for c in args["configs"]]
    if args["mode"] == "solo":
        recipe = LoraRecipe(configs[0], rank, world)
        manifest = recipe.run()
        print(json.dumps({"published": manifest is not None, "resumed_from": recipe.resumed_from,
                          "losses": [h["loss"] for h in recipe.history]}))
    else:
        from lorafarm.cotrain.pack import PackRecipe

        recipe = PackRecipe(configs, rank, world)
        for m in recipe.members:
            n = args.get("stop_after", {}).get(m.cfg.job_id)
            if n:
                m.cfg.control = StopAfter(m, n)
        out = recipe.run()
        print(json.dumps({"members": {k: {**v, "manifest": v["manifest"] is not None} for k, v in out.items()},
                          "resumed": {m.cfg.job_id: m.resumed_from for m in recipe.members},
                          "checkpoints": {m.cfg.job_id: m.checkpoints for m in recipe.members},
                          "losses": {m.cfg.job_id: [h["loss"] for h in m.history] for m in recipe.members}}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
